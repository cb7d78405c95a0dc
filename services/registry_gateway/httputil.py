"""Parsing of the request pieces the OCI routes share: names, digests, ranges, pagination."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from aiohttp import web

from shared.errors import InvalidArgument
from shared.oci.digest import Digest
from shared.oci.reference import parse_repository
from services.registry_gateway.errors import PAGINATION_NUMBER_INVALID, RANGE_INVALID

API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
_CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")
MAX_PAGE = 10000


def repository(request: web.Request) -> str:
    return parse_repository(request.match_info["name"])


def digest_param(value: str | None, what: str = "digest") -> Digest:
    if not value:
        raise InvalidArgument(f"{what} is required", detail_code="DIGEST_INVALID")
    return Digest(value)


def content_range(request: web.Request) -> tuple[int, int] | None:
    """The (start, end) of a PATCH's `Content-Range`, inclusive; None when absent."""
    value = request.headers.get("Content-Range")
    if value is None:
        return None
    m = _CONTENT_RANGE_RE.match(value.strip())
    if not m:
        raise InvalidArgument(f"invalid Content-Range {value!r}", detail_code=RANGE_INVALID)
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise InvalidArgument(f"invalid Content-Range {value!r}", detail_code=RANGE_INVALID)
    length = request.content_length
    if length is not None and length != end - start + 1:
        raise InvalidArgument(f"Content-Range {value!r} does not match Content-Length {length}",
                              detail_code=RANGE_INVALID)
    return start, end


def pagination(request: web.Request) -> tuple[int | None, str]:
    """`n` and `last` query parameters of tag and catalog listings."""
    n_raw = request.query.get("n")
    n = None
    if n_raw is not None and n_raw != "":
        try:
            n = int(n_raw)
        except ValueError:
            raise InvalidArgument(f"invalid n {n_raw!r}", detail_code=PAGINATION_NUMBER_INVALID) from None
        if n < 0:
            raise InvalidArgument(f"invalid n {n_raw!r}", detail_code=PAGINATION_NUMBER_INVALID)
        n = min(n, MAX_PAGE)
    return n, request.query.get("last", "")


def next_link(path: str, n: int | None, page: list[str], total_more: bool) -> dict[str, str]:
    """The RFC 5988 `Link` header pointing at the next page, when there is one."""
    if n is None or not page or not total_more:
        return {}
    return {"Link": f'<{path}?{urlencode({"n": n, "last": page[-1]})}>; rel="next"'}


def range_header(size: int) -> str:
    """An upload's `Range` reply header: the inclusive span received (0-0 when empty)."""
    return f"0-{max(size - 1, 0)}"
