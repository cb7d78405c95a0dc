"""The few error classes every layer raises, and their one mapping to wire codes.

Each class has a stable `code` used on the bus (error replies) and an HTTP status.
An error may carry a more specific `detail_code` (an OCI distribution error code
such as BLOB_UNKNOWN) that the registry-gateway puts in its `{"errors": [...]}` body.
"""

from __future__ import annotations


class DockyardError(Exception):
    code = "INTERNAL"
    http_status = 500

    def __init__(self, message: str, *, detail_code: str | None = None, detail: object = None):
        super().__init__(message)
        self.message = message
        self.detail_code = detail_code
        self.detail = detail


class NotFound(DockyardError):
    code = "NOT_FOUND"
    http_status = 404


class AlreadyExists(DockyardError):
    code = "ALREADY_EXISTS"
    http_status = 409


class InvalidArgument(DockyardError):
    code = "INVALID_ARGUMENT"
    http_status = 400


class Conflict(DockyardError):
    code = "CONFLICT"
    http_status = 409


class Unavailable(DockyardError):
    code = "UNAVAILABLE"
    http_status = 503


class Unauthenticated(DockyardError):
    code = "UNAUTHENTICATED"
    http_status = 401


class PermissionDenied(DockyardError):
    code = "PERMISSION_DENIED"
    http_status = 403


class Internal(DockyardError):
    code = "INTERNAL"
    http_status = 500


_BY_CODE: dict[str, type[DockyardError]] = {
    cls.code: cls
    for cls in (NotFound, AlreadyExists, InvalidArgument, Conflict, Unavailable,
                Unauthenticated, PermissionDenied, Internal)
}


def from_code(code: str, message: str, detail_code: str | None = None) -> DockyardError:
    """Rebuild the typed error that a remote peer reported by its code."""
    return _BY_CODE.get(code, Internal)(message, detail_code=detail_code)
