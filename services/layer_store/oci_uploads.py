"""The OCI upload protocol on the data plane, for sessions the registry-gateway hands out.

A registry client on the layer-store's own network (loopback) is sent here directly by
the gateway's `POST /v2/<name>/blobs/uploads/`, so that blob bytes are not relayed
through a second process. The URL is the gateway's own upload path on this listener,
signed for the session (scope UPLOAD, shared.dataplane_sign): a client that keeps only
the path of `Location` reaches the gateway's route of the same name and session instead,
so the direct URL is never a dead end. Only sessions started with the commit-hook label
(`UPLOAD_HOOK_LABEL`) answer here.

    PATCH  /v2/<name>/blobs/uploads/<id>            append (optional `Content-Range:
                                                    <start>-<end>`, 416 when not at the
                                                    current size); 202
    GET    /v2/<name>/blobs/uploads/<id>            204, `Range`
    PUT    /v2/<name>/blobs/uploads/<id>?digest=D   optional final body; commit, then ask
                                                    the hook (the gateway links the blob
                                                    into the session's repository) before
                                                    answering 201
    DELETE /v2/<name>/blobs/uploads/<id>            204

Replies carry the OCI headers (`Location`: this URL with a renewed signature, `Range`,
`Docker-Upload-UUID`, `Docker-Content-Digest`) and OCI error bodies `{"errors": [...]}`.
The same session can be continued through the gateway at any point.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.layer_store.plane import COMMIT_HOOK, DRIVER, SIGNER, announce_commit, body_chunks, digest_param
from services.layer_store.ranges import parse_content_range, range_header
from shared import codec
from shared.dataplane_sign import UPLOAD, UPLOAD_TTL
from shared.errors import DockyardError, NotFound, Unavailable
from shared.layer_store_client import RangeNotSatisfiable
from shared.messages.layer_store import UPLOAD_HOOK_LABEL, UploadCommitted, UploadInfo

API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}

PATH = "/v2/{name:.+}/blobs/uploads/{id:[^/]+}"

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _oci_code(e: DockyardError) -> str:
    if isinstance(e, NotFound):
        return "BLOB_UPLOAD_UNKNOWN"
    if e.detail_code in ("DIGEST_INVALID", "SIZE_INVALID") and not isinstance(e, RangeNotSatisfiable):
        return e.detail_code
    if isinstance(e, Unavailable):
        return "UNAVAILABLE"
    # a chunk out of order, a bad range, a session another writer holds
    return "BLOB_UPLOAD_INVALID" if e.http_status < 500 else "UNKNOWN"


def _oci_errors(handler: Handler) -> Handler:
    """Errors as the registry API words them (this plane's own JSON form is for services)."""
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except DockyardError as e:
            return oci_error_response(e, _oci_code(e))
    return wrapped


def oci_error_response(e: DockyardError, code: str) -> web.Response:
    body = codec.encode({"errors": [{"code": code, "message": e.message, "detail": None}]})
    return web.Response(status=e.http_status, body=body, content_type="application/json",
                        headers=API_HEADERS)


async def _session(request: web.Request) -> UploadInfo:
    """The session named in the path, if it was started for the OCI protocol."""
    upload_id = request.match_info["id"]
    info = await request.app[DRIVER].upload_status(upload_id)
    if not info.labels.get(UPLOAD_HOOK_LABEL):
        raise NotFound(f"upload {upload_id} not found", detail_code="BLOB_UPLOAD_UNKNOWN")
    return info


def _offset(request: web.Request) -> int | None:
    span = parse_content_range(request.headers.get("Content-Range"))
    if span is None:
        return None
    start, end = span
    if request.content_length is not None and request.content_length != end - start + 1:
        raise RangeNotSatisfiable(f"Content-Range {start}-{end} does not match Content-Length "
                                  f"{request.content_length}")
    return start


def _accepted(request: web.Request, upload_id: str, size: int, status: int = 202) -> web.Response:
    # renewed on every reply: a session in use outlives its first URL's expiry
    location = request.app[SIGNER].signed_url("", UPLOAD, request.path, ttl=UPLOAD_TTL)
    return web.Response(status=status, headers={
        **API_HEADERS, "Location": location, "Docker-Upload-UUID": upload_id,
        "Range": range_header(size), "Content-Length": "0"})


@routes.patch(PATH)
@_oci_errors
async def patch(request: web.Request) -> web.Response:
    info = await _session(request)
    size = await request.app[DRIVER].append(info.id, body_chunks(request), offset=_offset(request))
    return _accepted(request, info.id, size)


@routes.get(PATH, allow_head=False)
@_oci_errors
async def status(request: web.Request) -> web.Response:
    info = await _session(request)
    return _accepted(request, info.id, info.size, status=204)


@routes.put(PATH)
@_oci_errors
async def put(request: web.Request) -> web.Response:
    info = await _session(request)
    hook = request.app[COMMIT_HOOK]
    if hook is None:
        raise Unavailable("this layer-store has no bus to announce commits on")
    digest = digest_param(request)
    driver = request.app[DRIVER]
    offset = _offset(request)
    chunks = None
    if request.body_exists:
        if offset is not None:  # a last chunk at a stated offset: check it like a PATCH
            await driver.append(info.id, body_chunks(request), offset=offset)
        else:
            chunks = body_chunks(request)
    blob = await driver.commit(info.id, digest, None, chunks)
    await announce_commit(request, blob)
    taken = await hook(info.labels[UPLOAD_HOOK_LABEL],
                       UploadCommitted(upload_id=info.id, digest=digest, size=blob.size))
    return web.Response(status=201, headers={
        **API_HEADERS, "Location": taken.location or f"/blobs/{digest}", "Docker-Content-Digest": digest,
        "Content-Length": "0"})


@routes.delete(PATH)
@_oci_errors
async def cancel(request: web.Request) -> web.Response:
    info = await _session(request)
    await request.app[DRIVER].abort(info.id)
    return web.Response(status=204, headers=API_HEADERS)

