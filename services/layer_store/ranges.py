"""Parsing of the `Range` (blob reads) and `Content-Range` (upload chunks) headers."""

from __future__ import annotations

import re

from shared.layer_store_client import RangeNotSatisfiable

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
# OCI uploads send `<start>-<end>`; also accept the RFC 9110 form `bytes <start>-<end>/<total>`.
_CONTENT_RANGE_RE = re.compile(r"^\s*(?:bytes\s+)?(\d+)\s*-\s*(\d+)\s*(?:/\s*(?:\d+|\*))?\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single byte range as (offset, length) within `size` bytes; None for the whole blob.

    Multiple ranges, malformed and unsatisfiable ranges are all refused (416): a blob
    store serves one contiguous piece per request, like distribution does.
    """
    if header is None:
        return None
    m = _RANGE_RE.match(header)
    if not m or (not m.group(1) and not m.group(2)):
        raise RangeNotSatisfiable(f"invalid Range {header!r}", size=size)
    first, last = m.groups()
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"unsatisfiable Range {header!r}", size=size)
        n = min(n, size)
        return size - n, n
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"unsatisfiable Range {header!r} for {size} bytes", size=size)
    end = min(end, size - 1)
    return start, end - start + 1


def parse_content_range(header: str | None) -> tuple[int, int] | None:
    """An upload chunk's inclusive (start, end), or None when the header is absent."""
    if header is None:
        return None
    m = _CONTENT_RANGE_RE.match(header)
    if not m:
        raise RangeNotSatisfiable(f"invalid Content-Range {header!r}")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise RangeNotSatisfiable(f"invalid Content-Range {header!r}: end before start")
    return start, end


def range_header(size: int) -> str:
    """The `Range: 0-<last>` an upload reply carries (`0-0` when still empty, as distribution does)."""
    return f"0-{max(size - 1, 0)}"
