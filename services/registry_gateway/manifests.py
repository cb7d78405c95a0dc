"""Manifest, tag-list and referrers routes of the OCI distribution API."""

from __future__ import annotations

from aiohttp import web

from shared import codec
from shared.errors import InvalidArgument, NotFound
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from shared.oci.manifest import MAX_MANIFEST_BYTES
from shared.oci.reference import parse_tag
from services.registry_gateway import httputil
from services.registry_gateway.authz import DELETE, PRINCIPAL_KEY, PULL, PUSH
from services.registry_gateway.core import Registry, is_digest, manifest_unknown
from services.registry_gateway.errors import MANIFEST_TOO_LARGE
from services.registry_gateway.keys import AUTHORIZER, REGISTRY

routes = web.RouteTableDef()
_MANIFEST = "/v2/{name:.+}/manifests/{reference:[^/]+}"


async def _authorized(request: web.Request, actions: frozenset[str]) -> tuple[Registry, str]:
    repo = httputil.repository(request)
    await request.app[AUTHORIZER].authorize(request, repo, actions)
    return request.app[REGISTRY], repo


def _acceptable(request: web.Request, media_type: str) -> bool:
    """Whether the client's Accept allows this manifest type (no Accept: anything goes)."""
    accept = request.headers.getall("Accept", [])
    types = {part.split(";")[0].strip() for value in accept for part in value.split(",")}
    types.discard("")
    if not types or "*/*" in types or media_type in types:
        return True
    # Clients that predate OCI ask for Docker types only; an OCI manifest by tag would
    # confuse them, which is why distribution answers MANIFEST_UNKNOWN in that case.
    return False


def _reference(reference: str) -> str:
    """A tag or a digest; DIGEST_INVALID or TAG_INVALID for anything else (the spec allows no other)."""
    if is_digest(reference):
        Digest(reference)
        return reference
    return parse_tag(reference)


def _naming(repo: str, reference: str) -> str:
    """The reference of a read or delete: one that is no tag or digest names no manifest (404)."""
    try:
        return _reference(reference)
    except InvalidArgument as e:
        raise manifest_unknown(repo, reference) from e


def _writable(reference: str) -> str:
    """The reference of a PUT: 400, with a code of the spec's table (it lists TAG_INVALID as legacy only)."""
    try:
        return _reference(reference)
    except InvalidArgument as e:
        if e.detail_code == "DIGEST_INVALID":
            raise
        raise InvalidArgument(f"{reference!r} is neither a tag nor a digest", detail_code="MANIFEST_INVALID",
                              detail={"reference": reference}) from e


@routes.get(_MANIFEST)  # and HEAD
async def get_manifest(request: web.Request) -> web.StreamResponse:
    registry, repo = await _authorized(request, frozenset({PULL}))
    reference = _naming(repo, request.match_info["reference"])
    link = await registry.resolve(repo, reference)
    if not is_digest(reference) and not _acceptable(request, link.media_type):
        raise NotFound(f"manifest {reference} is a {link.media_type}, which the Accept header "
                       f"does not allow", detail_code="MANIFEST_UNKNOWN")
    headers = {**httputil.API_HEADERS, "Docker-Content-Digest": link.digest, "Content-Type": link.media_type,
               "Etag": f'"{link.digest}"'}
    if request.method == "HEAD":
        headers["Content-Length"] = str(link.size)
        return web.Response(status=200, headers=headers)
    body = await registry.manifest_body(link)
    return web.Response(status=200, body=body, headers=headers)


@routes.put(_MANIFEST)
async def put_manifest(request: web.Request) -> web.Response:
    registry, repo = await _authorized(request, frozenset({PULL, PUSH}))
    reference = _writable(request.match_info["reference"])
    if request.content_length is not None and request.content_length > MAX_MANIFEST_BYTES:
        raise InvalidArgument(f"manifest of {request.content_length} bytes exceeds {MAX_MANIFEST_BYTES}",
                              detail_code=MANIFEST_TOO_LARGE)
    body = await _read_limited(request, MAX_MANIFEST_BYTES)
    link = await registry.put_manifest(repo, reference, body, request.headers.get("Content-Type"),
                                       pushed_by=getattr(request.get(PRINCIPAL_KEY), "name", ""))
    headers = {**httputil.API_HEADERS, "Docker-Content-Digest": link.digest,
               "Location": f"/v2/{repo}/manifests/{link.digest}"}
    if link.subject is not None:
        headers["OCI-Subject"] = link.subject
    return web.Response(status=201, headers=headers)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes even without Content-Length."""
    parts, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise InvalidArgument(f"manifest exceeds {limit} bytes", detail_code=MANIFEST_TOO_LARGE)
        parts.append(chunk)
    return b"".join(parts)


@routes.delete(_MANIFEST)
async def delete_manifest(request: web.Request) -> web.Response:
    registry, repo = await _authorized(request, frozenset({DELETE}))
    reference = _naming(repo, request.match_info["reference"])
    if is_digest(reference):
        await registry.delete_manifest(repo, Digest(reference))
    else:
        await registry.untag(repo, reference)
    return web.Response(status=202, headers=httputil.API_HEADERS)


@routes.get("/v2/{name:.+}/tags/list")
async def list_tags(request: web.Request) -> web.Response:
    registry, repo = await _authorized(request, frozenset({PULL}))
    n, last = httputil.pagination(request)
    if not await registry.meta.repository_exists(repo):
        raise NotFound(f"repository {repo} not found", detail_code="NAME_UNKNOWN")
    names = await registry.meta.list_tags(repo, last=last)
    page = names if n is None else names[:n]
    headers = {**httputil.API_HEADERS, **httputil.next_link(request.path, n, page, len(names) > len(page))}
    return web.Response(body=codec.encode({"name": repo, "tags": page}), content_type="application/json",
                        headers=headers)


@routes.get("/v2/{name:.+}/referrers/{digest:[^/]+}")
async def referrers(request: web.Request) -> web.Response:
    registry, repo = await _authorized(request, frozenset({PULL}))
    subject = httputil.digest_param(request.match_info["digest"])
    found = await registry.meta.referrers(repo, subject)
    headers = dict(httputil.API_HEADERS)
    wanted = request.query.get("artifactType")
    if wanted:
        found = [r for r in found if r.artifact_type == wanted]
        headers["OCI-Filters-Applied"] = "artifactType"
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
             "manifests": [codec.to_builtins(r) for r in found]}
    return web.Response(body=codec.encode(index), headers={**headers, "Content-Type": mt.OCI_INDEX})

