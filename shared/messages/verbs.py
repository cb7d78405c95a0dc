"""The everyday verbs of issue 11 (wait, restart, rename, pause, update, top, stats, events,
cp, diff, export, commit): requests and replies to the agent that holds the container.

Each is `shared.subjects.agent(agent_id, VERB)`; `events` is also asked fleet-wide
(`shared.messages.agent.fleet(VERB_EVENTS)`) for the events an agent kept. Live events
are published on `dockyard.events.container.<agent_id>.<action>` as `ContainerEvent`.
Bytes of `cp` and `export` travel as `Chunk`s (raw payloads, headers for the rest) to
an inbox the requester names, one window of chunks at a time (flow control: the agent
waits for the requester's ack).
A `cp` requester that shares the agent's loopback (`plane` = shared.locality.here())
gets a `url` instead: a signed, expiring, single-use grant for that one copy on the
agent's HTTP copy plane (services/runtime_agent/verbs/cpplane.py).

This module is imported by the CLI: it imports msgspec and nothing heavy.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.messages.agent import Container
from shared.messages.common import Inbox

VERB_WAIT = "wait"
VERB_RESTART = "restart"
VERB_RENAME = "rename"
VERB_PAUSE = "pause"
VERB_UNPAUSE = "unpause"
VERB_UPDATE = "update"
VERB_TOP = "top"
VERB_STATS = "stats"
VERB_EVENTS = "events"
VERB_DIFF = "diff"
VERB_CP_FROM = "cp-from"  # container -> requester (a tar stream)
VERB_CP_TO = "cp-to"  # requester -> container (a tar stream)
VERB_EXPORT = "export"
VERB_COMMIT = "commit"

READER_VERBS = (VERB_WAIT, VERB_TOP, VERB_STATS, VERB_EVENTS, VERB_DIFF)
OPERATOR_VERBS = (VERB_RESTART, VERB_RENAME, VERB_PAUSE, VERB_UNPAUSE, VERB_UPDATE, VERB_CP_FROM, VERB_CP_TO,
                  VERB_EXPORT)
# commit pushes with the agent's own registry credential, which no repository grant limits:
# admins only, until the gateway issues the agent a token bound to the person who asks.
ADMIN_VERBS = (VERB_COMMIT,)


# ---- wait, restart, rename, pause, update ----------------------------------------------

class WaitRequest(msgspec.Struct, kw_only=True):
    """Block until the container is not running, for at most `timeout` seconds (the CLI asks again)."""

    container: str
    timeout: float = 30.0


class WaitReply(msgspec.Struct, kw_only=True):
    id: str
    running: bool = False  # still running after `timeout`: ask again
    exit_code: int | None = None


class RestartRequest(msgspec.Struct, kw_only=True):
    container: str
    timeout: float = 10.0
    timeout_given: bool = False  # no -t: the container's --stop-timeout, else 10 s


class RenameRequest(msgspec.Struct, kw_only=True):
    container: str
    name: str


class UpdateRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`docker update`: only the fields given change; the record keeps them for the next start."""

    container: str
    memory: int | None = None  # bytes
    memory_swap: int | None = None  # bytes, memory + swap; -1 unlimited
    cpu_shares: int | None = None
    cpus: float | None = None  # 0 removes the quota
    pids_limit: int | None = None  # -1 or 0 unlimited
    restart: str | None = None  # no | on-failure[:N] | always | unless-stopped


# ---- top, stats ------------------------------------------------------------------------

class TopRequest(msgspec.Struct, kw_only=True):
    container: str
    ps_args: list[str] = []  # ps options, e.g. ["-o", "pid,comm"] (default: -ef)


class TopReply(msgspec.Struct, kw_only=True):
    titles: list[str]
    processes: list[list[str]] = []


class Stats(msgspec.Struct, kw_only=True, frozen=True):
    """One sample of a container's cgroup and veth counters (cumulative; the CLI takes deltas)."""

    id: str
    name: str
    read: float  # unix seconds of the sample
    running: bool = True
    cpu_ns: int = 0  # cpuacct.usage
    system_ns: int = 0  # the host's CPU time, all CPUs (for docker's CPU %)
    online_cpus: int = 1
    memory_usage: int = 0  # bytes, page cache of inactive files left out (docker's rule)
    memory_limit: int = 0  # the cgroup's limit, or the host's memory
    net_rx: int = 0
    net_tx: int = 0
    block_read: int = 0
    block_write: int = 0
    pids: int = 0


class FleetStatsRequest(msgspec.Struct, kw_only=True):
    """`stats` in one scatter-gather (fleet subject): each agent samples at once the containers
    `match` names (PsRequest.match's rule for each entry), else all it holds (running ones
    unless `all`)."""

    match: list[str] = []
    all: bool = False


class StatsSample(msgspec.Struct, kw_only=True):
    """One container's two samples, with the `match` entry that named it ("" when listing)."""

    ref: str = ""
    created: str = ""  # RFC 3339 (the listing is newest first, as `ps`)
    stats: Stats
    pre: Stats | None = None


class FleetStatsReply(msgspec.Struct, kw_only=True):
    host: str
    samples: list[StatsSample] = []


# ---- events ----------------------------------------------------------------------------

class ContainerEvent(msgspec.Struct, kw_only=True, frozen=True):
    """A container's lifecycle event with docker's action names (create, start, die, ...)."""

    action: str
    id: str
    image: str = ""
    name: str = ""
    host: str = ""
    time_nano: int = 0
    attributes: dict[str, str] = {}
    type: str = "container"


class EventsRequest(msgspec.Struct, kw_only=True):
    """The events an agent kept with since <= time <= until (unix seconds; 0: unbounded)."""

    since: float = 0.0
    until: float = 0.0


class EventsReply(msgspec.Struct, kw_only=True):
    host: str
    events: list[ContainerEvent] = []


# ---- diff, cp, export, commit ----------------------------------------------------------

class Change(msgspec.Struct, kw_only=True, frozen=True, array_like=True):
    kind: Literal["A", "C", "D"]
    path: str


class DiffReply(msgspec.Struct, kw_only=True):
    changes: list[Change] = []


class CopyFromRequest(msgspec.Struct, kw_only=True):
    """`cp CONTAINER:PATH -`: a tar of PATH, as Chunks to `stream_inbox`."""

    container: str
    path: str
    follow_link: bool = False  # -L: a symlink at PATH is followed (inside the root)
    stream_inbox: Inbox = ""  # the agent publishes the stream there: an inbox, nothing else
    plane: str = ""  # the requester's shared.locality.here(): a match gets a `url` to GET
    raw_chunks: bool = False  # the requester reads Chunks as raw payloads (chunk_of); else JSON


class PathStat(msgspec.Struct, kw_only=True, frozen=True):
    """What is at a path inside the container (docker's X-Docker-Container-Path-Stat)."""

    name: str
    size: int = 0
    mode: int = 0
    is_dir: bool = False
    link_target: str = ""


class CopyFromReply(msgspec.Struct, kw_only=True):
    stat: PathStat
    sent: int = 0  # bytes of the tar stream
    url: str = ""  # the copy plane's grant: GET it for the tar (nothing was sent on the bus)


class CopyToRequest(msgspec.Struct, kw_only=True):
    """`cp SRC CONTAINER:PATH`: the agent asks `stream_inbox` for the tar's chunks (ChunkWant).

    PATH an existing directory: the archive goes into it. Otherwise its parent must be one,
    and the archive's top entry `src_base` is renamed to PATH's last name (docker's rule)."""

    container: str
    path: str
    src_base: str = ""
    copy_uid_gid: bool = False  # -a: keep the archive's owners (else root)
    stream_inbox: Inbox = ""  # the agent publishes the stream there: an inbox, nothing else
    plane: str = ""  # the requester's shared.locality.here(): a match gets a `url` to PUT


class CopyToReply(msgspec.Struct, kw_only=True):
    written: int = 0  # bytes of regular files
    url: str = ""  # the copy plane's grant: PUT the tar to it (its answer says `written`)


class Chunk(msgspec.Struct, kw_only=True):
    """One piece of a byte stream. `seq` counts from 0; the last has `end` (and maybe `error`).

    On the bus its bytes are the message's payload as they are, the rest its headers
    (`chunk_headers`, `chunk_of`): no JSON, no base64 a third bigger. Each side sends that
    only to a peer that said it reads it (`raw_chunks`, `ChunkWant.raw`): an older one
    gets the JSON Chunk, and `chunk_of` reads either."""

    seq: int
    data: bytes = b""
    end: bool = False
    error: str = ""


SEQ_HEADER = "Dockyard-Seq"
END_HEADER = "Dockyard-End"
ERROR_HEADER = "Dockyard-Error"


def chunk_headers(c: Chunk) -> dict[str, str]:
    h = {SEQ_HEADER: str(c.seq)}
    if c.end:
        h[END_HEADER] = "1"
    if c.error:  # a header is one line
        h[ERROR_HEADER] = " ".join(c.error.split())[:1000] or "failed"
    return h


def chunk_of(data: bytes, headers: dict[str, str] | None) -> Chunk:
    """The Chunk a bus message carries (raw, or JSON from an older peer); InvalidArgument if
    it is neither."""
    from shared.errors import InvalidArgument
    h = headers or {}
    if SEQ_HEADER not in h and data[:1] == b"{":
        from shared import codec
        return codec.decode(data, Chunk)
    seq = h.get(SEQ_HEADER, "")
    if not (seq.isascii() and seq.isdigit()):
        raise InvalidArgument(f"a stream chunk without a valid {SEQ_HEADER} header")
    return Chunk(seq=int(seq), data=data, end=h.get(END_HEADER) == "1", error=h.get(ERROR_HEADER, ""))


class ChunkWant(msgspec.Struct, kw_only=True):
    """`cp` into a container: the agent asks the requester for chunk `seq` (answered with a Chunk)."""

    seq: int
    raw: bool = False  # the agent reads a raw answer (chunk_headers); an older one, JSON only


class ChunkAck(msgspec.Struct, kw_only=True):
    seq: int
    error: str = ""
    written: int = 0  # at the end: the bytes the agent took in


class ExportRequest(msgspec.Struct, kw_only=True):
    container: str
    stream_inbox: Inbox = ""  # the agent publishes the stream there: an inbox, nothing else
    plane: str = ""  # as CopyFromRequest's: a match gets a `url` to GET
    raw_chunks: bool = False  # as CopyFromRequest's


class ExportReply(msgspec.Struct, kw_only=True):
    sent: int = 0  # bytes of the tar stream
    url: str = ""  # the copy plane's grant for the whole filesystem's tar


class CommitRequest(msgspec.Struct, kw_only=True):
    container: str
    reference: str = ""  # repository[:tag] in the stack registry; "" untagged
    message: str = ""  # -m
    author: str = ""  # -a
    changes: list[str] = []  # --change Dockerfile instructions (CMD, ENTRYPOINT, ENV, ...)
    pause: bool = True


class CommitReply(msgspec.Struct, kw_only=True):
    digest: str  # the image manifest's
    reference: str = ""
    config_digest: str = ""


class ContainerVerbReply(msgspec.Struct, kw_only=True):
    container: Container
