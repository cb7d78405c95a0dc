"""Cron expressions (five fields, minute first, or six with seconds first) and durations, for the
garbage-collector's schedules and the CLI that sets them."""

from __future__ import annotations

import re

from croniter import croniter, CroniterBadCronError, CroniterBadDateError

from shared.errors import InvalidArgument


def _make(expr: str, start: float) -> croniter:
    fields = expr.split()
    # Seconds first, like Quartz, Spring and robfig/cron's WithSeconds (croniter's own
    # default puts them last).
    return croniter(" ".join(fields), start, second_at_beginning=len(fields) == 6)


def validate(expr: str) -> str:
    """The normalised expression, or InvalidArgument."""
    norm = " ".join(expr.split())
    if len(norm.split()) not in (5, 6):
        raise InvalidArgument(f"cron expression {expr!r} needs 5 fields (or 6 with seconds first)")
    try:
        _make(norm, 0).get_next(float)
    except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as e:
        raise InvalidArgument(f"invalid cron expression {expr!r}: {e}") from e
    return norm


def latest_tick(expr: str, now: float) -> float:
    """The most recent scheduled time at or before `now`."""
    # croniter's get_prev is strict; nudge so that a tick exactly at `now` counts.
    return _make(expr, now + 1e-3).get_prev(float)


def next_tick(expr: str, now: float) -> float:
    """The first scheduled time strictly after `now`."""
    return _make(expr, now).get_next(float)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'7d', '12h', '30m', '90s', '2w' or plain seconds -> seconds."""
    m = _DURATION.match(text or "")
    if not m:
        raise InvalidArgument(f"invalid duration {text!r} (use e.g. 90s, 30m, 12h, 7d, 2w)")
    return float(m.group(1)) * _UNIT[m.group(2)]
