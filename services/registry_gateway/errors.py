"""The one mapping from shared.errors to OCI distribution error replies.

Every failure in the gateway is a `DockyardError`; this table turns (class, detail_code)
into the HTTP status and the OCI error code of the `{"errors": [...]}` body.
"""

from __future__ import annotations

import logging

from aiohttp import web

from shared import admission, codec
from shared.errors import (AlreadyExists, Conflict, DockyardError, Internal, InvalidArgument,
                           NotFound, PermissionDenied, Unauthenticated, Unavailable)

log = logging.getLogger("dockyard.registry")

# detail codes the gateway itself raises beyond the OCI ones
MANIFEST_TOO_LARGE = "MANIFEST_TOO_LARGE"
RANGE_INVALID = "RANGE_INVALID"
PAGINATION_NUMBER_INVALID = "PAGINATION_NUMBER_INVALID"
TOO_MANY_REQUESTS = admission.TOO_MANY_REQUESTS  # 429, with Retry-After (detail "retry_after")

# Keys of an error's `detail` dict that become response headers; `oci_detail`, if present,
# is the body's `detail` as it stands (distribution's list of access records, say).
HEADER_DETAILS = {"www_authenticate": "WWW-Authenticate", "retry_after": "Retry-After"}

# (error class, detail_code or None for the class default) -> (HTTP status, OCI code)
ERROR_TABLE: dict[tuple[type[DockyardError], str | None], tuple[int, str]] = {
    (InvalidArgument, None): (400, "UNSUPPORTED"),
    (InvalidArgument, "DIGEST_INVALID"): (400, "DIGEST_INVALID"),
    (InvalidArgument, "NAME_INVALID"): (400, "NAME_INVALID"),
    (InvalidArgument, "TAG_INVALID"): (400, "TAG_INVALID"),
    (InvalidArgument, "MANIFEST_INVALID"): (400, "MANIFEST_INVALID"),
    (InvalidArgument, "MANIFEST_BLOB_UNKNOWN"): (400, "MANIFEST_BLOB_UNKNOWN"),
    (InvalidArgument, "SIZE_INVALID"): (400, "SIZE_INVALID"),
    (InvalidArgument, "BLOB_UPLOAD_INVALID"): (400, "BLOB_UPLOAD_INVALID"),
    (InvalidArgument, PAGINATION_NUMBER_INVALID): (400, PAGINATION_NUMBER_INVALID),
    (InvalidArgument, MANIFEST_TOO_LARGE): (413, "SIZE_INVALID"),
    (InvalidArgument, RANGE_INVALID): (416, RANGE_INVALID),
    (InvalidArgument, "UNSUPPORTED"): (405, "UNSUPPORTED"),
    (NotFound, None): (404, "NAME_UNKNOWN"),
    (NotFound, "BLOB_UNKNOWN"): (404, "BLOB_UNKNOWN"),
    (NotFound, "BLOB_UPLOAD_UNKNOWN"): (404, "BLOB_UPLOAD_UNKNOWN"),
    (NotFound, "MANIFEST_UNKNOWN"): (404, "MANIFEST_UNKNOWN"),
    (NotFound, "NAME_UNKNOWN"): (404, "NAME_UNKNOWN"),
    (NotFound, "MANIFEST_BLOB_UNKNOWN"): (400, "MANIFEST_BLOB_UNKNOWN"),
    (AlreadyExists, None): (409, "DENIED"),
    (Conflict, None): (409, "DENIED"),
    (Conflict, RANGE_INVALID): (416, RANGE_INVALID),
    (Conflict, "BLOB_UPLOAD_INVALID"): (416, "BLOB_UPLOAD_INVALID"),
    (Unauthenticated, None): (401, "UNAUTHORIZED"),
    (PermissionDenied, None): (403, "DENIED"),
    (Unavailable, None): (503, "UNAVAILABLE"),
    (Unavailable, TOO_MANY_REQUESTS): (429, TOO_MANY_REQUESTS),
    (Internal, None): (500, "UNKNOWN"),
}


def status_and_code(err: DockyardError) -> tuple[int, str]:
    for cls in type(err).__mro__:
        if not (isinstance(cls, type) and issubclass(cls, DockyardError)):
            continue
        hit = ERROR_TABLE.get((cls, err.detail_code)) or ERROR_TABLE.get((cls, None))
        if hit:
            return hit
    return 500, "UNKNOWN"


def error_response(err: DockyardError, *, head: bool = False) -> web.Response:
    status, code = status_and_code(err)
    headers = {"Docker-Distribution-API-Version": "registry/2.0"}
    detail = err.detail
    if isinstance(detail, dict):
        headers.update({h: str(detail[k]) for k, h in HEADER_DETAILS.items() if k in detail})
        if "oci_detail" in detail:
            detail = detail["oci_detail"]
        else:
            detail = {k: v for k, v in detail.items() if k not in HEADER_DETAILS} or None
    body = codec.encode({"errors": [{"code": code, "message": err.message, "detail": detail}]})
    if head:  # a HEAD reply carries the status and headers only
        return web.Response(status=status, headers=headers)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler):
    head = request.method == "HEAD"
    try:
        return await handler(request)
    except DockyardError as e:
        if status_and_code(e)[0] >= 500:
            log.warning("%s %s: %s", request.method, request.path, e.message)
        return error_response(e, head=head)
    except web.HTTPNotFound:
        if not request.path.startswith("/v2/"):
            raise
        return error_response(NotFound(f"no route for {request.path}", detail_code="NAME_UNKNOWN"), head=head)
    except web.HTTPMethodNotAllowed:
        return error_response(InvalidArgument(f"{request.method} is not supported on {request.path}",
                                              detail_code="UNSUPPORTED"), head=head)
