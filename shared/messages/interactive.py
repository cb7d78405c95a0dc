"""Interactive containers over the bus: attach, exec, a session's input and its output frames.

A *session* is one client attached to one process's stdio (a container's init, or an
exec). The client names it (`AttachSpec.session`, 128 random bits) and the inbox the
agent sends `Frame`s to; it sends `Input` on `subjects.agent(id, AGENT_STDIN)`.

Flow control, output: a session has a credit window (`AttachSpec.window` bytes, at most
WINDOW_MAX). `Frame.offset` is the session's byte count after the frame; the client
acks the offset it has written out (`Input(kind="ack")`) at least every quarter window
and every KEEPALIVE seconds. The agent sends no more than `window` bytes past the last
ack and queues at most `window` bytes more per session; when a queue is full it stops
reading the process's output (the kernel's pipe or pty buffer then blocks the process),
so an attached session costs the agent at most 2 x window + one read (64 KiB). A session
that sends nothing for SESSION_TIMEOUT seconds is dropped (the CLI was killed): the
process keeps running, its output still goes to the container's log, and a later
`attach` opens a new session.

Flow control, input: stdin data is sent as requests of at most STDIN_CHUNK bytes,
answered once written to the process, and a client keeps at most STDIN_IN_FLIGHT
unanswered: the agent holds at most STDIN_IN_FLIGHT x STDIN_CHUNK bytes of a session's
input.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.messages.common import Inbox

WINDOW_DEFAULT = 256 << 10
WINDOW_MAX = 1 << 20
WINDOW_MIN = 16 << 10
FRAME_CHUNK = 32 << 10  # the most data bytes in one Frame (base64 in JSON: ~44 KiB on the wire)
STDIN_CHUNK = 32 << 10
STDIN_IN_FLIGHT = 4
KEEPALIVE = 2.0  # seconds between a client's acks when nothing else is sent
SESSION_TIMEOUT = 15.0  # a session silent this long is dropped

STDOUT, STDERR = 1, 2


class StdioConfig(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """`run -i` (stdin stays open, the agent holds it) and `-t` (a pty from the runtime)."""

    open_stdin: bool = False
    tty: bool = False

    @property
    def interactive(self) -> bool:
        return self.open_stdin or self.tty


class AttachSpec(msgspec.Struct, kw_only=True, frozen=True):
    """Where a session's output goes and how much may be in flight; the terminal's size."""

    session: str  # chosen by the client: 32 hex digits
    inbox: Inbox
    stdin: bool = True  # the client sends input (not `attach --no-stdin`)
    window: int = WINDOW_DEFAULT
    rows: int = 0
    cols: int = 0


class AttachRequest(msgspec.Struct, kw_only=True):
    container: str
    attach: AttachSpec


class AttachReply(msgspec.Struct, kw_only=True):
    id: str  # the container's full id
    tty: bool = False
    stdin: bool = False  # input reaches the process (it has an open stdin)


class ExecRequest(msgspec.Struct, kw_only=True):
    """`exec [-d] [-i] [-t] [-e] [-w] [-u] CONTAINER CMD...`; `attach` unless detached."""

    container: str
    args: list[str]
    env: list[str] = []
    workdir: str = ""
    user: str = ""
    tty: bool = False
    stdin: bool = False
    detach: bool = False
    attach: AttachSpec | None = None
    # Every capability the agent has: only on subjects.AGENT_EXEC_PRIVILEGED (admins);
    # the plain `exec` verb refuses it with shared.messages.agent.NEEDS_PRIVILEGE.
    privileged: bool = False


class ExecReply(msgspec.Struct, kw_only=True):
    id: str  # the container's full id
    exec_id: str = ""


class Input(msgspec.Struct, kw_only=True):
    """What a client sends a session: stdin bytes, their end, acks, a resize, or goodbye."""

    session: str
    kind: Literal["data", "eof", "ack", "resize", "close"]
    data: bytes = b""
    acked: int = 0  # ack: the output offset written out so far
    rows: int = 0
    cols: int = 0


class InputReply(msgspec.Struct, kw_only=True):
    pass


class Frame(msgspec.Struct, kw_only=True):
    """What the agent sends a session's inbox.

    kind: `out` (data of `stream`, 1 stdout or 2 stderr; with a tty all of it is 1),
    `exit` (the last frame: the process ended with `exit_code`), `error` (the session
    ended for `error`).
    """

    kind: Literal["out", "exit", "error"]
    stream: int = STDOUT
    data: bytes = b""
    offset: int = 0
    exit_code: int | None = None
    error: str = ""
