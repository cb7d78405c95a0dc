"""The per-container state directory: what the caller and the shim leave on disk.

`<state_root>/containers/<id>/` holds `meta.json` (written by Runtime before
the shim starts), `shim.json` (by the shim once the container runs),
`exit.json` (by the shim once it has reaped the container), `shim.log` (the
shim's own stderr) and `container.pid` (the runtime's pid file). Everything a
restarted caller needs to find, signal and wait for its containers is here.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import msgspec

from shared.errors import InvalidArgument

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class Meta(msgspec.Struct, frozen=True):
    bundle: str
    log_path: str
    cgroups_path: str
    runtime_argv: tuple[str, ...]  # the command prefix, with its --root
    runtime_root: str


class ShimRecord(msgspec.Struct, frozen=True):
    pid: int
    pid_start: int
    shim_pid: int
    shim_start: int
    started_at: str
    held: tuple[int, ...] = ()  # interactive: the shim's fds of the caller's stdio ends (stdio.py)


class ExitRecord(msgspec.Struct, frozen=True):
    pid: int
    exit_code: int
    oom_killed: bool
    started_at: str | None
    finished_at: str


def check_id(cid: str) -> str:
    if not _ID_RE.match(cid):
        raise InvalidArgument(f"invalid container id {cid!r}")
    return cid


def read(path: Path, kind: type[msgspec.Struct]):
    """The record at `path`, or None if it is not (yet) there."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=kind)
    except FileNotFoundError:
        return None


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.rename(tmp, path)


def runtime_has(runtime_root: str | os.PathLike, cid: str) -> bool:
    """Whether the runtime still keeps state for `cid` (runc and crun: `<root>/<id>/`)."""
    return os.path.isdir(os.path.join(runtime_root, cid))


def start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (None if no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def open_pidfd(pid: int, expected_start: int) -> int | None:
    """A pidfd for `pid` only if it is still the process that started at `expected_start`.

    The pidfd is taken first and the start time checked after: if the check
    passes, the fd is bound to the right process even if the pid is reused later.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if start_ticks(pid) != expected_start or _is_zombie(pid):
        os.close(fd)
        return None
    return fd


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] in (b"Z", b"X")


async def wait_pidfd(fd: int, timeout: float | None) -> None:
    """Wait until the process behind `fd` exits (the fd turns readable)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await asyncio.wait_for(done, timeout)
    finally:
        loop.remove_reader(fd)
