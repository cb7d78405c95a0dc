"""The layer-store's HTTP data plane: blob reads and upload sessions, streamed both ways.

    GET/HEAD /blobs/<digest>        Range (one range; 416 when unsatisfiable); also as
             /v2/<name>/blobs/<digest>, the path of a registry's blob redirect
    POST     /uploads[?algorithm=]  optional body {"labels": {...}}; 201 {UploadInfo}, Location
    PATCH    /uploads/<id>          append the body; `Content-Range: <start>-<end>` or
                                    `Upload-Offset: <start>` must equal the current size
                                    (416 otherwise); 202 {UploadInfo}, `Range: 0-<last>`
    GET      /uploads/<id>          200 {UploadInfo}, `Range`
    PUT      /uploads/<id>?digest=D[&size=N]   optional final body; 201 {BlobInfo}
    DELETE   /uploads/<id>          204

`GET /metrics` (Prometheus) answers loopback clients and `DOCKYARD_METRICS_TOKEN` only.
Every other request, on every path, carries the registry-gateway's signature
(`?exp=&sig=`, shared.dataplane_sign); without a valid one the answer is 403 with an OCI
error body (DENIED), and nothing else is revealed. Other errors are JSON
{"code","message","detail_code"} with the status of their class. Sessions labelled for it
also speak the OCI upload protocol (`oci_uploads`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from services.layer_store import admission as gate, metrics, oci_uploads
from services.layer_store.plane import (COMMIT_HOOK, DIGEST_HEADER, DRIVER, ON_COMMIT, READ_BUFSIZE, SIGNER,
                                        CommitHook, OnCommit, announce_commit, body_chunks, digest_param)
from services.layer_store.ranges import parse_content_range, parse_range, range_header
from services.layer_store.storage.base import StorageDriver
from shared import codec
from shared.admission import Admission
from shared.dataplane_sign import UPLOAD, DataplaneSigner
from shared.errors import DockyardError, Internal, InvalidArgument, PermissionDenied
from shared.layer_store_client import UPLOAD_OFFSET_HEADER, RangeNotSatisfiable
from shared.messages.common import ErrorReply
from shared.messages.layer_store import StartUploadRequest, UploadInfo
from shared.metrics import exposition
from shared.metrics import http as http_metrics
from shared.oci.digest import Digest

__all__ = ["READ_BUFSIZE", "create_app"]

log = logging.getLogger("dockyard.layer_store.http")


def json_response(value: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=codec.encode(value), status=status, headers=headers,
                        content_type="application/json")


def error_response(e: DockyardError) -> web.Response:
    headers = {}
    if isinstance(e, RangeNotSatisfiable) and e.size is not None:
        headers["Content-Range"] = f"bytes */{e.size}"
    return json_response(ErrorReply(code=e.code, message=e.message, detail_code=e.detail_code),
                         e.http_status, headers)


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except DockyardError as e:
        return error_response(e)
    except web.HTTPException:
        raise
    except (ConnectionError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError) as e:
        # the peer went away mid-body: what arrived stays in the session (resumable)
        log.info("%s %s: client connection lost: %s", request.method, request.path, e)
        raise
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(Internal(f"layer-store: {type(e).__name__}: {e}"))


def _signed_scope(request: web.Request) -> tuple[str, str]:
    """(method or scope, digest) that the request's signature must cover."""
    info = request.match_info
    if "id" in info and request.path.startswith("/v2/"):  # an OCI upload session's URL
        return UPLOAD, ""
    return request.method, info.get("digest") or request.query.get("digest", "")


@web.middleware
async def signature_middleware(request: web.Request, handler):
    """Every route, and every unknown path, answers only a request the gateway signed; but
    `GET /metrics`, which answers only loopback clients or the metrics token instead."""
    if request.path == exposition.PATH and request.method == "GET":
        return await handler(request)
    method, digest = _signed_scope(request)
    try:
        request.app[SIGNER].verify(method, request.path, digest, request.query.get("exp"),
                                   request.query.get("sig"))
    except PermissionDenied as e:
        log.info("refused %s %s from %s: %s", request.method, request.path, request.remote, e.message)
        return oci_uploads.oci_error_response(e, "DENIED")
    return await handler(request)


def _driver(request: web.Request) -> StorageDriver:
    return request.app[DRIVER]


def _upload_id(request: web.Request) -> str:
    return request.match_info["id"]


def _upload_headers(info: UploadInfo) -> dict[str, str]:
    return {"Location": f"/uploads/{info.id}", "Range": range_header(info.size)}


async def get_blob(request: web.Request) -> web.StreamResponse:
    digest = Digest(request.match_info["digest"])
    driver = _driver(request)
    info = await driver.stat(digest)
    # Validated here so that a bad range gets the JSON 416 (FileResponse repeats the parse).
    rng = parse_range(request.headers.get("Range"), info.size)
    headers = {DIGEST_HEADER: str(digest), "Content-Type": "application/octet-stream",
               "Accept-Ranges": "bytes"}
    # Read and written, not sendfile: on loopback the receiver of sendfile'd page-cache
    # pages spent more CPU than the whole copy costs here (skopeo pulls of 200 MB took
    # ~0.95 s against ~0.86 s read-and-write, measured alternately on one machine).
    offset, length = rng or (0, info.size)
    resp = web.StreamResponse(status=206 if rng else 200, headers=headers)
    if rng:
        resp.headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{info.size}"
    resp.content_length = length
    await resp.prepare(request)
    if request.method != "HEAD":
        async for chunk in driver.read(digest, offset, length):
            await resp.write(chunk)
    await resp.write_eof()
    return resp


async def start_upload(request: web.Request) -> web.Response:
    labels: dict[str, str] = {}
    if request.body_exists:
        body = await request.read()
        if body:
            labels = codec.decode(body, StartUploadRequest).labels
    info = await _driver(request).start_upload(request.query.get("algorithm", "sha256"), labels)
    return json_response(info, 201, _upload_headers(info))


def _chunk_offset(request: web.Request) -> int | None:
    cr = parse_content_range(request.headers.get("Content-Range"))
    if cr is not None:
        start, end = cr
        length = request.content_length
        if length is not None and length != end - start + 1:
            raise RangeNotSatisfiable(
                f"Content-Range {start}-{end} does not match Content-Length {length}")
        return start
    raw = request.headers.get(UPLOAD_OFFSET_HEADER)
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise RangeNotSatisfiable(f"invalid {UPLOAD_OFFSET_HEADER} {raw!r}")
    return int(raw)


async def append_upload(request: web.Request) -> web.Response:
    upload_id = _upload_id(request)
    offset = _chunk_offset(request)
    driver = _driver(request)
    await driver.append(upload_id, body_chunks(request), offset=offset)
    info = await driver.upload_status(upload_id)
    return json_response(info, 202, _upload_headers(info))


async def upload_status(request: web.Request) -> web.Response:
    info = await _driver(request).upload_status(_upload_id(request))
    return json_response(info, 200, _upload_headers(info))


def _size_param(request: web.Request) -> int | None:
    raw = request.query.get("size")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise InvalidArgument(f"invalid size {raw!r}", detail_code="SIZE_INVALID")
    return int(raw)


async def commit_upload(request: web.Request) -> web.Response:
    digest = digest_param(request)
    size = _size_param(request)
    chunks = body_chunks(request) if request.body_exists else None
    info = await _driver(request).commit(_upload_id(request), digest, size, chunks)
    await announce_commit(request, info)
    return json_response(info, 201, {"Location": f"/blobs/{digest}", DIGEST_HEADER: str(digest)})


async def cancel_upload(request: web.Request) -> web.Response:
    await _driver(request).abort(_upload_id(request))
    return web.Response(status=204)


async def _close_driver(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[DRIVER].close()


def create_app(driver: StorageDriver, signer: DataplaneSigner, *, on_commit: OnCommit | None = None,
               commit_hook: CommitHook | None = None, admission: Admission | None = None) -> web.Application:
    """The data-plane app; it owns `driver` and closes it on cleanup. Without a
    `commit_hook` (no bus), OCI upload sessions cannot be committed here. `admission`
    bounds registry clients' requests in flight (default: from DOCKYARD_MAX_INFLIGHT, else
    the layer-store's own default)."""
    admission = admission or Admission.from_env(gate.DEFAULT_MAX_INFLIGHT)
    app = web.Application(middlewares=[http_metrics.middleware, signature_middleware, gate.middleware(admission),
                                       metrics.uploads_in_flight, errors_middleware])
    app[DRIVER] = driver
    app[SIGNER] = signer
    app[ON_COMMIT] = on_commit
    app[COMMIT_HOOK] = commit_hook
    app.cleanup_ctx.append(_close_driver)
    exposition.add_route(app)
    app.add_routes(oci_uploads.routes)  # before blobs: `/blobs/uploads/<id>` is no digest
    app.router.add_get("/blobs/{digest}", get_blob)  # HEAD too
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", get_blob)  # a registry's blob redirect
    app.router.add_post("/uploads", start_upload)
    app.router.add_patch("/uploads/{id}", append_upload)
    app.router.add_get("/uploads/{id}", upload_status, allow_head=False)
    app.router.add_put("/uploads/{id}", commit_upload)
    app.router.add_delete("/uploads/{id}", cancel_upload)
    return app
