"""runtime-agent requests, replies, container and image records, heartbeats, stream messages.

Per-host verbs are `shared.subjects.agent(agent_id, VERB)`; fleet-wide listings go to
`fleet(VERB)`, which every agent subscribes to without a queue group so that a
scatter-gather (`BusClient.gather`) hears each of them. Long-running output (a
foreground `run`, `logs -f`) is sent as `StreamMessage`s to an inbox the requester
names in the request (`stream_inbox`); the last one has `kind="end"`.

This module is imported by the CLI: it imports msgspec and nothing heavy.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.messages.common import Inbox
from shared.messages.interactive import AttachSpec, StdioConfig
from shared.messages.networks import Endpoint, EndpointInfo
from shared.messages.runflags import HealthProbe, RunFlags
from shared.messages.volumes import Mount

# ---- subjects --------------------------------------------------------------------------

FLEET_PREFIX = "dockyard.agent.all"
RESERVED_AGENT_IDS = frozenset({"all", "any"})  # would collide with fleet-wide subjects

VERB_RUN = "run"
VERB_START = "start"
VERB_STOP = "stop"
VERB_KILL = "kill"
VERB_RM = "rm"
VERB_INSPECT = "inspect"
VERB_LOGS = "logs"
VERB_PS = "ps"
VERB_IMAGES = "images"
VERB_PULL = "pull"
VERB_PRUNE = "prune"  # the GC's verb (shared.messages.gc.PruneRequest/PruneReply)

# The detail code of a `run` refused for a host bind outside DOCKYARD_AGENT_VOLUME_ROOTS:
# the CLI then sends it to shared.subjects.AGENT_RUN_HOST_BIND, which only admins may publish.
VOLUME_OUTSIDE_ROOTS = "VOLUME_OUTSIDE_ROOTS"
# runflags: a `run` with --privileged (or another flag that gives the host away) is refused
# with this detail; the CLI then sends it to shared.subjects.AGENT_RUN_PRIVILEGED (admins only).
NEEDS_PRIVILEGE = "NEEDS_PRIVILEGE"


def fleet(verb: str) -> str:
    """The subject every agent answers (no queue group): scatter-gather listings."""
    return f"{FLEET_PREFIX}.{verb}"


# ---- values ----------------------------------------------------------------------------

NetworkMode = Literal["bridge", "none", "host"]
RestartName = Literal["no", "on-failure", "always", "unless-stopped"]
# "unknown": shown by `ps` for a container whose agent is gone (never sent by an agent)
ContainerStatus = Literal["created", "running", "exited", "removing", "dead", "unknown"]


class RestartPolicy(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    name: RestartName = "no"
    maximum_retry_count: int = 0  # on-failure:N; 0 = no limit


class Volume(msgspec.Struct, kw_only=True, frozen=True):
    """`-v HOST:CTR[:ro]` (a host path bound into the container), or a named volume's mount."""

    source: str  # the host path mounted (a volume's mountpoint for kind "volume")
    destination: str
    readonly: bool = False
    # volumes: "volume" for a named or anonymous volume (shared/messages/volumes.py)
    kind: str = "bind"
    name: str = ""  # the volume's name
    anonymous: bool = False  # made for this container (the image's VOLUME): `rm -v` removes it
    nocopy: bool = False


class Port(msgspec.Struct, kw_only=True, frozen=True):
    """A published port in force: host_ip:host_port -> container_port/protocol."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.container_port}/{self.protocol}"


class Limits(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    memory: int | None = None  # bytes (--memory)
    memory_swap: int | None = None  # bytes, memory + swap (--memory-swap), -1 unlimited
    cpu_shares: int | None = None


class ContainerConfig(msgspec.Struct, kw_only=True, frozen=True):
    """What the container runs, after the image's config and the flags were merged."""

    image: str  # as the user wrote it
    image_digest: str = ""
    args: list[str] = []  # the whole argv (entrypoint + cmd)
    entrypoint: list[str] = []
    cmd: list[str] = []
    env: list[str] = []
    working_dir: str = "/"
    user: str = ""
    hostname: str = ""
    volumes: list[Volume] = []
    network: str = "bridge"  # bridge, none, host or a user network's name (networks)
    publish: list[str] = []  # the --publish specs as given
    restart: RestartPolicy = RestartPolicy()
    auto_remove: bool = False
    limits: Limits = Limits()
    labels: dict[str, str] = {}
    # runflags: the issue-11 run/create flags, resolved against the image
    flags: RunFlags = RunFlags()
    # interactive: -i / -t (shared/messages/interactive.py)
    stdio: StdioConfig = StdioConfig()
    endpoints: list[Endpoint] = []  # networks: the user networks it is on, the first its --network


class ContainerState(msgspec.Struct, kw_only=True, frozen=True):
    status: ContainerStatus = "created"
    pid: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    started_at: str = ""  # RFC 3339
    finished_at: str = ""
    restart_count: int = 0
    manual_stop: bool = False  # stopped by a user: no restart policy applies
    paused: bool = False  # verbs: `pause` froze its cgroup (status stays running, as docker's Running)
    # runflags: "" (no check), starting, healthy, unhealthy; the last probes
    health: str = ""
    failing_streak: int = 0
    health_log: list[HealthProbe] = []


class NetworkInfo(msgspec.Struct, kw_only=True, frozen=True):
    mode: NetworkMode = "bridge"
    ip: str = ""
    prefixlen: int = 0
    gateway: str = ""
    ports: list[Port] = []
    endpoints: list[EndpointInfo] = []  # networks: one per user network it is on


class Container(msgspec.Struct, kw_only=True, frozen=True):
    """One container as `ps` and `inspect` show it (and as the agent persists it)."""

    id: str
    name: str
    host: str  # the agent id
    created: str  # RFC 3339
    config: ContainerConfig
    state: ContainerState = ContainerState()
    network: NetworkInfo = NetworkInfo()
    log_path: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:12]


# ---- requests and replies --------------------------------------------------------------

class RunRequest(msgspec.Struct, kw_only=True):
    """`dockyard run`: pull if needed, create and start. The pull's progress goes to
    `stream_inbox` when one is named; with `detach=False` the output follows, ending with an
    `end` message carrying the exit code."""

    image: str
    name: str = ""
    command: list[str] | None = None  # replaces the image's Cmd
    entrypoint: list[str] | None = None  # replaces the image's Entrypoint ([""] clears it)
    env: list[str] = []
    workdir: str = ""
    user: str = ""
    publish: list[str] = []
    memory: int | None = None
    memory_swap: int | None = None
    cpu_shares: int | None = None
    volumes: list[str] = []  # HOST:CTR[:ro|:rw]
    network: str = "bridge"  # bridge, none, host or a user network (networks)
    restart: str = "no"  # no | on-failure[:N] | always | unless-stopped
    rm: bool = False
    detach: bool = True
    pull: Literal["missing", "always", "never"] = "missing"
    labels: dict[str, str] = {}
    hostname: str = ""  # the container's host name; empty: its short id, like docker
    stream_inbox: Inbox = ""
    # runflags: the issue-11 flags; `create` makes the container without starting it
    flags: RunFlags = RunFlags()
    create_only: bool = False
    # interactive: -i / -t, and the CLI's session on the container's stdio from its start
    stdio: StdioConfig = StdioConfig()
    attach: AttachSpec | None = None
    # volumes: `--mount` specs and `--volumes-from CONTAINER[:ro|:rw]`
    mounts: list[Mount] = []
    volumes_from: list[str] = []
    network_aliases: list[str] = []  # networks: --network-alias, on a user network only
    ip: str = ""  # networks: --ip, on a user network only


class RunReply(msgspec.Struct, kw_only=True):
    container: Container
    warnings: list[str] = []


class ContainerRef(msgspec.Struct, kw_only=True):
    """A container by name, full id or unique id prefix (on this agent)."""

    container: str


class StartRequest(msgspec.Struct, kw_only=True):
    """`start [-a] [-i]`: with `attach`, a session on the container's stdio from this start on
    (cli11; a ContainerRef as older clients send it decodes as one without)."""

    container: str
    attach: AttachSpec | None = None


class StopRequest(msgspec.Struct, kw_only=True):
    container: str
    timeout: float = 10.0
    # runflags: False when `stop` had no -t: the container's --stop-timeout applies
    timeout_given: bool = True


class KillRequest(msgspec.Struct, kw_only=True):
    container: str
    signal: str = "KILL"


class RmRequest(msgspec.Struct, kw_only=True):
    container: str
    force: bool = False
    volumes: bool = False  # volumes: `rm -v` removes the container's anonymous volumes too


class RmReply(msgspec.Struct, kw_only=True):
    id: str


class ContainerReply(msgspec.Struct, kw_only=True):
    container: Container


class PsRequest(msgspec.Struct, kw_only=True):
    all: bool = False
    # Only containers this reference names (name, id or id prefix); "" matches all.
    match: str = ""
    # runflags: `ps -s`: the reply's `sizes` gives each container's writable layer
    size: bool = False


class PsReply(msgspec.Struct, kw_only=True):
    host: str
    containers: list[Container] = []
    sizes: dict[str, int] = {}  # runflags: container id -> bytes of its writable layer (`ps -s`)


class LogsRequest(msgspec.Struct, kw_only=True):
    container: str
    follow: bool = False
    tail: int = -1  # lines from the end; -1 all
    timestamps: bool = False
    stream_inbox: Inbox = ""


class LogsReply(msgspec.Struct, kw_only=True):
    id: str
    running: bool = False


class ImageRecord(msgspec.Struct, kw_only=True, frozen=True):
    """An image an agent has pulled and unpacked."""

    digest: str  # the image manifest's digest
    references: list[str] = []  # e.g. 127.0.0.1:5000/library/busybox:latest
    config_digest: str = ""
    diff_ids: list[str] = []
    size: int = 0  # compressed bytes pulled
    created: str = ""  # from the image config
    pulled_at: float = 0.0  # unix seconds
    os: str = "linux"
    architecture: str = "amd64"


class ImagesRequest(msgspec.Struct, kw_only=True):
    pass


class ImagesReply(msgspec.Struct, kw_only=True):
    host: str
    images: list[ImageRecord] = []


class PullRequest(msgspec.Struct, kw_only=True):
    image: str
    stream_inbox: Inbox = ""


class PullReply(msgspec.Struct, kw_only=True):
    image: ImageRecord


# ---- streaming -------------------------------------------------------------------------

class LogLine(msgspec.Struct, kw_only=True, frozen=True, array_like=True):
    stream: str  # stdout | stderr
    time: str
    line: str


class StreamMessage(msgspec.Struct, kw_only=True):
    """One message of a stream to a requester's inbox.

    kind: `output` (log lines), `progress` (pull), `ping` (sent as a request: a live
    requester answers, else the agent stops streaming), `end` (the last message;
    `exit_code` set when the container exited, `error` when the stream broke).
    """

    kind: Literal["output", "progress", "ping", "end"]
    lines: list[LogLine] = []
    message: str = ""
    exit_code: int | None = None
    error: str = ""


def unix_time(text: str) -> float | None:
    """Unix seconds of an RFC 3339 time such as the records carry (nanoseconds allowed)."""
    if not text:
        return None
    from datetime import datetime
    head, dot, rest = text.partition(".")
    if dot:
        frac = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{frac[:6].ljust(6, '0')}{rest[len(frac):]}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# ---- heartbeats ------------------------------------------------------------------------

HEARTBEAT_INTERVAL = 2.0  # seconds between heartbeats
HEARTBEAT_STALE = 8.0  # a host whose last heartbeat is older is lost: shown so, never placed on
# The bucket's max age: a lost host is shown lost this long (its containers `unknown`),
# then forgotten. A clean shutdown deletes the entry at once.
HEARTBEAT_TTL = 24 * 3600.0


class Heartbeat(msgspec.Struct, kw_only=True, frozen=True):
    """What an agent tells the fleet every HEARTBEAT_INTERVAL (KV `dockyard-agents`, key = id)."""

    agent_id: str
    address: str
    runtime: str = ""  # crun 1.8.1
    cpus: int = 0
    memory_total: int = 0  # bytes this host offers to containers
    memory_free: int = 0  # bytes not yet promised to running containers' limits
    containers: int = 0  # all it knows
    running: int = 0
    images: int = 0
    time: float = 0.0  # unix seconds when sent
    started_at: float = 0.0
    version: str = "0.1.0"


def is_lost(beat: Heartbeat, now: float) -> bool:
    """The host's last heartbeat is older than HEARTBEAT_STALE: shown lost, never placed on."""
    return now - beat.time >= HEARTBEAT_STALE
