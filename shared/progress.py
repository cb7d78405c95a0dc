"""How work done in the CLI's own process tells its progress: a blob's status, bytes so far.

`save` and `load` (shared.archives) call an `OnBlob` as each blob travels; the CLI's
Reporter (services/cli/progress.py) shows the same statuses as bars, lines or JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

WAITING, ACTIVE, DONE, EXISTS, MOUNTED = "waiting", "active", "done", "exists", "mounted"

# (item: a short digest, status, bytes so far, bytes in all)
OnBlob = Callable[[str, str, int, int], None]


def nothing(item: str, status: str, current: int = 0, total: int = 0) -> None:
    """The OnBlob of a caller that shows no progress."""


def counted(source: Callable[[], AsyncIterator[bytes]], on_bytes: Callable[[int], Any]) \
        -> Callable[[], AsyncIterator[bytes]]:
    """`source` (a callable giving chunks), telling `on_bytes` how many have gone by after each."""
    async def chunks() -> AsyncIterator[bytes]:
        n = 0
        async for chunk in source():
            n += len(chunk)
            on_bytes(n)
            yield chunk
    return chunks
