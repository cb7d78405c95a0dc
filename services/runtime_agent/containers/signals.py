"""Signal names as the CLI and images spell them (`KILL`, `SIGTERM`, `15`), to numbers."""

from __future__ import annotations

import signal as _signal

from shared.errors import InvalidArgument


def parse_signal(text: str) -> int:
    t = str(text).upper()
    if t.isdigit():
        n = int(t)
    else:
        name = t if t.startswith("SIG") else f"SIG{t}"
        try:
            n = int(_signal.Signals[name])
        except KeyError:
            raise InvalidArgument(f"invalid signal: {text}") from None
    if not 0 < n < 65:
        raise InvalidArgument(f"invalid signal: {text}")
    return n
