"""The `run`/`create` flags of issue 11 as typed values: what the CLI sends, what a container keeps.

The CLI parses each flag into these (services/cli/runopts.py); the agent resolves them
against the image (its STOPSIGNAL, HEALTHCHECK, EXPOSE) and keeps the result in
`ContainerConfig.flags`. Times are seconds, 0 meaning docker's default.
"""

from __future__ import annotations

import msgspec


class Ulimit(msgspec.Struct, kw_only=True, frozen=True):
    """`--ulimit NAME=SOFT[:HARD]` (-1 unlimited)."""

    name: str  # nofile, nproc, core, ... (docker's names)
    soft: int
    hard: int


class Tmpfs(msgspec.Struct, kw_only=True, frozen=True):
    """`--tmpfs PATH[:OPTS]`."""

    path: str
    options: list[str] = []


class HostEntry(msgspec.Struct, kw_only=True, frozen=True):
    """`--add-host NAME:IP`."""

    name: str
    ip: str


class Health(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A health check: docker's `Test` (["NONE"], ["CMD", ...] or ["CMD-SHELL", cmd])."""

    test: list[str] = []
    interval: float = 0.0  # 0: 30 s
    timeout: float = 0.0  # 0: 30 s
    start_period: float = 0.0
    retries: int = 0  # 0: 3


class RunFlags(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    cpus: float = 0.0  # --cpus; 0 unset
    pids_limit: int = 0  # --pids-limit; 0 unset, -1 unlimited
    ulimits: list[Ulimit] = []
    publish_all: bool = False  # -P
    read_only: bool = False
    tmpfs: list[Tmpfs] = []
    init: bool = False
    add_hosts: list[HostEntry] = []
    dns: list[str] = []
    cap_add: list[str] = []  # CAP_ names, or ALL
    cap_drop: list[str] = []
    no_new_privileges: bool = False  # dockyard sets no_new_privs always; kept as given
    seccomp_profile: str = ""  # a profile's JSON text, or "unconfined"; "" the default profile
    privileged: bool = False
    stop_signal: str = ""  # "" the image's STOPSIGNAL, else SIGTERM
    stop_timeout: float | None = None  # None: 10 s
    health: Health | None = None  # None: the image's HEALTHCHECK; test ["NONE"] disables it


class HealthProbe(msgspec.Struct, kw_only=True, frozen=True, array_like=True):
    """One run of a health command (docker's State.Health.Log entry)."""

    start: str
    end: str
    exit_code: int
    output: str
