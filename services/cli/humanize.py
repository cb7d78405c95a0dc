"""Sizes and durations as docker writes and reads them: `200m`, `1.5GiB`, `3 minutes ago`."""

from __future__ import annotations

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str, *, allow_unlimited: bool = False) -> int:
    """docker's RAMInBytes: `200m`, `1G`, `512kb`, `1024` (binary units); `-1` if allowed."""
    from shared.errors import InvalidArgument
    t = text.strip().lower()
    if allow_unlimited and t == "-1":
        return -1
    num = t.rstrip("bkmgtp")
    unit = t[len(num):]
    if unit.endswith("b") and len(unit) == 2:
        unit = unit[0]
    try:
        value = float(num)
    except ValueError:
        raise InvalidArgument(f"invalid size: {text!r}") from None
    if unit not in _UNITS or value < 0:
        raise InvalidArgument(f"invalid size: {text!r}")
    return int(value * _UNITS[unit])


def size(n: float) -> str:
    """`512B`, `1.5KiB`, `23.5GiB`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def duration(seconds: float) -> str:
    """`Less than a second`, `1 minute`, `3 hours` (the largest unit only, as docker's)."""
    s = int(max(0, seconds))
    if s < 1:
        return "Less than a second"
    for span, name in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if s >= span:
            n = s // span
            return f"{n} {name}{'s' if n != 1 else ''}"
    return f"{s} seconds"


def ago(text: str, now: float) -> str:
    """`3 minutes ago` for an RFC 3339 time ('' if there is none)."""
    from shared.messages.agent import unix_time
    t = unix_time(text)
    return f"{duration(now - t)} ago" if t else ""
