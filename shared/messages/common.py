"""Messages every service shares: error replies, progress, empty requests."""

from __future__ import annotations

from typing import Annotated

import msgspec

# Where a service publishes to a requester (progress, a container's output, a session's
# frames): an inbox (`_INBOX.…`; a principal's own are `_INBOX.<name>.…`), never another
# subject, since the service may publish where its caller may not. A request naming
# anything else fails to decode (InvalidArgument).
Inbox = Annotated[str, msgspec.Meta(pattern=r"^(_INBOX(\.[^.\s*>]+)+)?\Z", max_length=255)]


class ErrorReply(msgspec.Struct, kw_only=True):
    code: str
    message: str
    detail_code: str | None = None


class Empty(msgspec.Struct, kw_only=True):
    pass


class Ok(msgspec.Struct, kw_only=True):
    ok: bool = True


class Progress(msgspec.Struct, kw_only=True):
    """A line of progress streamed to a request's `progress_inbox` while it runs."""

    kind: str = "log"  # log | step | bytes | warning | output
    message: str = ""
    step: int = 0
    total_steps: int = 0
    stream: str = ""  # stdout | stderr, for container output
    data: bytes = b""
    current: int = 0
    total: int = 0


class ServiceHealth(msgspec.Struct, kw_only=True):
    name: str
    id: str
    version: str
    metadata: dict[str, str] = {}
