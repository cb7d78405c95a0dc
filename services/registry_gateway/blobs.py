"""Blob and upload routes of the OCI distribution API; bytes stream to and from the layer-store.

An upload session is the layer-store's own session (any gateway replica can continue it);
the repository it belongs to is kept in KV so a session cannot be continued under another.

Direct uploads: when client and layer-store share loopback (or DIRECT_UPLOAD is "on"),
the `Location` of a new session is this gateway's upload URL on the layer-store's
listener, signed for the session, so the bytes go there without a relay through this
process. The layer-store asks this gateway (bus subject UPLOAD_HOOK, any replica) to
take the committed blob before it answers the client's PUT: the blob is linked into the
session's repository, and only that one. A client that keeps only the path of
`Location` continues the same session here. Blob redirects work the same way: a 307 to
the signed `/v2/<name>/blobs/<digest>` on the layer-store; followed by path alone, it is
streamed from here. Either URL is handed out only after a request to the layer-store
just succeeded, so a layer-store that restarted on another port is found first.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web
from yarl import URL

from shared.bus import BusService
from shared.dataplane_sign import UPLOAD, UPLOAD_TTL
from shared.errors import Conflict, DockyardError, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from shared.messages.layer_store import UPLOAD_HOOK_LABEL, UploadCommitted, UploadTaken
from shared.oci.digest import Digest
from shared.oci.reference import parse_repository
from services.registry_gateway import httputil
from services.registry_gateway.authz import DELETE, PULL, PUSH
from services.registry_gateway.core import Registry
from services.registry_gateway.errors import RANGE_INVALID
from services.registry_gateway.keys import (AUTHORIZER, BLOB_REDIRECT, DIRECT_UPLOAD, REGISTRY, SIGNER,
                                            UPLOAD_HOOK)

routes = web.RouteTableDef()  # blobs
upload_routes = web.RouteTableDef()  # registered first: `/blobs/uploads` is no digest
_BLOB = "/v2/{name:.+}/blobs/{digest:[^/]+}"
_UPLOADS = "/v2/{name:.+}/blobs/uploads{slash:/?}"
_UPLOAD = "/v2/{name:.+}/blobs/uploads/{upload_id:[^/]+}"


async def _authorized(request: web.Request, actions: frozenset[str]) -> tuple[Registry, str]:
    repo = httputil.repository(request)
    await request.app[AUTHORIZER].authorize(request, repo, actions)
    return request.app[REGISTRY], repo


def _blob_unknown(repo: str, digest: str) -> NotFound:
    return NotFound(f"blob {digest} not found in {repo}", detail_code="BLOB_UNKNOWN")


async def _linked_blob(registry: Registry, repo: str, digest: Digest) -> None:
    if await registry.meta.blob_link(repo, digest) is None:
        raise _blob_unknown(repo, digest)


# ---- pull ------------------------------------------------------------------------------

@routes.head(_BLOB)
async def head_blob(request: web.Request) -> web.Response:
    registry, repo = await _authorized(request, frozenset({PULL}))
    digest = httputil.digest_param(request.match_info["digest"])
    await _linked_blob(registry, repo, digest)
    info = await _stat(registry, repo, digest)
    return web.Response(status=200, headers={
        **httputil.API_HEADERS, "Content-Length": str(info.size), "Docker-Content-Digest": digest,
        "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "Etag": f'"{digest}"'})


@routes.get(_BLOB, allow_head=False)
async def get_blob(request: web.Request) -> web.StreamResponse:
    registry, repo = await _authorized(request, frozenset({PULL}))
    digest = httputil.digest_param(request.match_info["digest"])
    await _linked_blob(registry, repo, digest)
    # `sig`: a client that resolved our redirect's path against this host; streamed, not
    # sent round again
    if "sig" not in request.query and _redirect(request, await registry.store.locate()):
        # The layer-store sends the bytes itself: no copy through this process.
        try:
            async with registry.store.open_blob(digest, method="HEAD"):
                pass  # it has the blob, at the address (re-located if it moved) used below
        except NotFound as e:
            raise _blob_unknown(repo, digest) from e
        url = request.app[SIGNER].signed_url(await registry.store.locate(), "GET",
                                             f"/v2/{repo}/blobs/{digest}", digest)
        raise web.HTTPTemporaryRedirect(url, headers={**httputil.API_HEADERS, "Docker-Content-Digest": digest})
    try:
        async with registry.store.open_blob(digest, range=request.headers.get("Range")) as up:
            headers = {**httputil.API_HEADERS, "Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream", "Etag": f'"{digest}"'}
            for name in ("Content-Range", "Content-Length"):
                if name in up.headers:
                    headers[name] = up.headers[name]
            resp = web.StreamResponse(status=up.status, headers=headers)
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
    except NotFound as e:
        raise _blob_unknown(repo, digest) from e


def _redirect(request: web.Request, layer_store_url: str) -> bool:
    return _bypass(request.app[BLOB_REDIRECT], request, layer_store_url)


def _bypass(mode: str, request: web.Request, layer_store_url: str) -> bool:
    """Whether to send the client to the layer-store itself (mode on, off or auto)."""
    if mode == "auto":
        return _loopback(request.remote) and _loopback(URL(layer_store_url).host)
    return mode in ("on", "1", "true")


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _stat(registry: Registry, repo: str, digest: Digest):
    try:
        return await registry.store.stat(digest)
    except NotFound as e:
        raise _blob_unknown(repo, digest) from e


@routes.delete(_BLOB)
async def delete_blob(request: web.Request) -> web.Response:
    """Unlink the blob from the repository; the GC reclaims bytes nothing references."""
    registry, repo = await _authorized(request, frozenset({DELETE}))
    digest = httputil.digest_param(request.match_info["digest"])
    if not await registry.meta.unlink_blob(repo, digest):
        raise _blob_unknown(repo, digest)
    return web.Response(status=202, headers=httputil.API_HEADERS)


# ---- push ------------------------------------------------------------------------------

def _created(repo: str, digest: Digest) -> web.Response:
    return web.Response(status=201, headers={
        **httputil.API_HEADERS, "Location": f"/v2/{repo}/blobs/{digest}", "Docker-Content-Digest": digest})


def _accepted(repo: str, upload_id: str, size: int, status: int = 202) -> web.Response:
    return web.Response(status=status, headers={
        **httputil.API_HEADERS, "Location": f"/v2/{repo}/blobs/uploads/{upload_id}",
        "Docker-Upload-UUID": upload_id, "Range": httputil.range_header(size), "Content-Length": "0"})


@upload_routes.post(_UPLOADS)
async def start_upload(request: web.Request) -> web.Response:
    registry, repo = await _authorized(request, frozenset({PULL, PUSH}))
    if "mount" in request.query:
        mounted = await _mount(request, registry, repo)
        if mounted is not None:
            return _created(repo, mounted)
    digest_raw = request.query.get("digest")
    if digest_raw is not None and "mount" not in request.query:
        digest = httputil.digest_param(digest_raw)
        info = await registry.store.put_blob(request.content, digest, request.content_length)
        await registry.meta.link_blob(repo, digest, info.size)
        return _created(repo, digest)
    if request.app[DIRECT_UPLOAD] != "off":
        base = await registry.store.locate()
        if _bypass(request.app[DIRECT_UPLOAD], request, base):
            return await _start_direct_upload(request, registry, repo)
    upload_id = await registry.store.start_upload()
    await registry.meta.begin_upload(upload_id, repo)
    return _accepted(repo, upload_id, 0)


async def _start_direct_upload(request: web.Request, registry: Registry, repo: str) -> web.Response:
    """A session whose `Location` is the layer-store's signed URL for it (module docstring)."""
    upload_id = await registry.store.start_upload(labels={UPLOAD_HOOK_LABEL: request.app[UPLOAD_HOOK]})
    await registry.meta.begin_upload(upload_id, repo, base_url=f"{request.scheme}://{request.host}")
    resp = _accepted(repo, upload_id, 0)
    # located after start_upload: that request re-located a layer-store that had moved
    resp.headers["Location"] = request.app[SIGNER].signed_url(
        await registry.store.locate(), UPLOAD, resp.headers["Location"], ttl=UPLOAD_TTL)
    return resp


async def _mount(request: web.Request, registry: Registry, repo: str) -> Digest | None:
    """Link a blob of another repository the client may pull; None: fall back to an upload."""
    digest = httputil.digest_param(request.query["mount"], "mount")
    source = request.query.get("from")
    if source:
        try:
            candidates = [parse_repository(source)]
        except InvalidArgument:
            return None
    else:  # anonymous mount: any repository holding the blob that the client may pull
        candidates = await registry.meta.repositories_with_blob(digest)
    for src in candidates:
        if src != repo and await registry.meta.blob_link(src, digest) is None:
            continue
        try:
            await request.app[AUTHORIZER].authorize(request, src, frozenset({PULL}))
        except (Unauthenticated, PermissionDenied):
            continue
        try:
            info = await registry.store.stat(digest, touch=True)
        except NotFound:
            return None
        await registry.meta.link_blob(repo, digest, info.size)
        return digest
    return None


async def _session(request: web.Request, actions: frozenset[str]) -> tuple[Registry, str, str]:
    registry, repo = await _authorized(request, actions)
    upload_id = request.match_info["upload_id"]
    if await registry.meta.upload_repository(upload_id) != repo:
        raise NotFound(f"upload {upload_id} not found in {repo}", detail_code="BLOB_UPLOAD_UNKNOWN")
    return registry, repo, upload_id


def _upload_errors(upload_id: str, err: DockyardError) -> DockyardError:
    """The layer-store's answer about a session, as the OCI code the client expects."""
    if isinstance(err, NotFound):
        return NotFound(f"upload {upload_id} not found", detail_code="BLOB_UPLOAD_UNKNOWN")
    if isinstance(err, Conflict) or (isinstance(err, InvalidArgument) and err.detail_code == RANGE_INVALID):
        # A chunk out of order is 416, with a code from the spec's table (as distribution does).
        return Conflict(err.message, detail_code="BLOB_UPLOAD_INVALID")
    return err


@upload_routes.patch(_UPLOAD)
async def patch_upload(request: web.Request) -> web.Response:
    registry, repo, upload_id = await _session(request, frozenset({PULL, PUSH}))
    span = httputil.content_range(request)
    try:
        size = await registry.store.append(upload_id, request.content, start=span[0] if span else None,
                                           length=request.content_length)
    except DockyardError as e:
        raise _upload_errors(upload_id, e) from e
    return _accepted(repo, upload_id, size)


@upload_routes.get(_UPLOAD)
async def upload_status(request: web.Request) -> web.Response:
    registry, repo, upload_id = await _session(request, frozenset({PULL, PUSH}))
    try:
        size = (await registry.store.upload_status(upload_id)).size
    except DockyardError as e:
        raise _upload_errors(upload_id, e) from e
    return _accepted(repo, upload_id, size, status=204)


@upload_routes.put(_UPLOAD)
async def finish_upload(request: web.Request) -> web.Response:
    registry, repo, upload_id = await _session(request, frozenset({PULL, PUSH}))
    digest = httputil.digest_param(request.query.get("digest"))
    span = httputil.content_range(request)
    has_body = bool(request.content_length) or request.headers.get("Transfer-Encoding") == "chunked"
    try:
        if span is not None:  # a last chunk at a stated offset: append it where it belongs
            await registry.store.append(upload_id, request.content, start=span[0], length=request.content_length)
            has_body = False
        info = await registry.store.commit(upload_id, digest, data=request.content if has_body else None,
                                           length=request.content_length)
    except DockyardError as e:
        raise _upload_errors(upload_id, e) from e
    await registry.meta.link_blob(repo, digest, info.size)
    await registry.meta.end_upload(upload_id)
    return _created(repo, digest)


@upload_routes.delete(_UPLOAD)
async def cancel_upload(request: web.Request) -> web.Response:
    registry, repo, upload_id = await _session(request, frozenset({PULL, PUSH}))
    try:
        await registry.store.cancel(upload_id)
    except NotFound:
        pass  # the layer-store already expired it; forgetting it is all that is left
    await registry.meta.end_upload(upload_id)
    return web.Response(status=204, headers=httputil.API_HEADERS)



# ---- direct uploads: the layer-store's commit hook -----------------------------------------

async def take_committed_upload(registry: Registry, msg: UploadCommitted) -> UploadTaken:
    """Link a directly uploaded blob into the repository its session was started for."""
    session = await registry.meta.upload_session(msg.upload_id)
    if session is None:
        raise NotFound(f"upload {msg.upload_id} not found", detail_code="BLOB_UPLOAD_UNKNOWN")
    await registry.meta.link_blob(session.repository, msg.digest, msg.size)
    await registry.meta.end_upload(msg.upload_id)
    return UploadTaken(location=f"{session.base_url}/v2/{session.repository}/blobs/{msg.digest}")


def register_upload_hook(service: BusService, registry: Registry, subject: str) -> None:
    async def handler(msg: UploadCommitted) -> UploadTaken:
        return await take_committed_upload(registry, msg)
    service.endpoint(subject, UploadCommitted, handler)
