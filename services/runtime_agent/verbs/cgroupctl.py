"""A running container's cgroup, read and written directly: freezer, limits, counters.

The runtime made the cgroup (`<cgroup_parent>/<id>` in every hierarchy); changing a
limit or freezing is one write to a control file, so no runtime process is spent on
it. cgroup v1 (the hosts' hybrid layout) first; a pure v2 host has the unified files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from shared.errors import Conflict
from shared.runtime import cgroups

_FREEZE_WAIT = 10.0


def _v1(controller: str, parent: str, cid: str, mounts: list | None = None) -> Path | None:
    d = cgroups.controller_dir(controller, f"{parent}/{cid}", mounts)
    return d if d is not None and d.is_dir() else None


def _v2(parent: str, cid: str, mounts: list | None = None) -> Path | None:
    for m in cgroups.cgroup_mounts() if mounts is None else mounts:
        if m.version == 2 and (m.path / "cgroup.controllers").exists():
            d = m.path / parent.strip("/") / cid
            if (d / "cgroup.procs").exists():
                return d
    return None


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise Conflict(f"cannot set {path.name} to {value}: {e.strerror}") from e


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text()
    except OSError:
        return default


def _int(path: Path) -> int:
    try:
        return int(_read(path, "0").split()[0])
    except (ValueError, IndexError):
        return 0


# ---- freezer ---------------------------------------------------------------------------

def freeze(parent: str, cid: str) -> None:
    _set_frozen(parent, cid, True)


def thaw(parent: str, cid: str) -> None:
    _set_frozen(parent, cid, False)


def _set_frozen(parent: str, cid: str, frozen: bool) -> None:
    d = _v1("freezer", parent, cid)
    if d is not None:
        _write(d / "freezer.state", "FROZEN" if frozen else "THAWED")
        want = "FROZEN" if frozen else "THAWED"
        deadline = time.monotonic() + _FREEZE_WAIT
        # FREEZING means some task has not stopped yet: the state is only true once it reads back.
        while _read(d / "freezer.state").strip() != want:
            if time.monotonic() > deadline:
                raise Conflict(f"container {cid[:12]}: the freezer did not reach {want}")
            time.sleep(0.002)
        return
    d2 = _v2(parent, cid)
    if d2 is None:
        raise Conflict(f"container {cid[:12]} has no freezer cgroup")
    _write(d2 / "cgroup.freeze", "1" if frozen else "0")
    deadline = time.monotonic() + _FREEZE_WAIT
    while ("frozen 1" in _read(d2 / "cgroup.events")) != frozen:
        if time.monotonic() > deadline:
            raise Conflict(f"container {cid[:12]}: the freezer did not settle")
        time.sleep(0.002)


# ---- limits (`update`) -----------------------------------------------------------------

CPU_PERIOD = 100_000


def set_limits(parent: str, cid: str, *, memory: int | None, swap: int | None,
               cpu_shares: int | None, cpus: float | None, pids_limit: int | None) -> None:
    """Write the limits given (None: unchanged). `swap` is memory+swap (-1 unlimited)."""
    mem_dir = _v1("memory", parent, cid)
    if mem_dir is not None:
        if memory is not None or swap is not None:
            _memory_v1(mem_dir, memory, swap)
        if cpu_shares is not None and (d := _v1("cpu", parent, cid)) is not None:
            _write(d / "cpu.shares", str(cpu_shares))
        if cpus is not None and (d := _v1("cpu", parent, cid)) is not None:
            _write(d / "cpu.cfs_period_us", str(CPU_PERIOD))
            _write(d / "cpu.cfs_quota_us", str(int(cpus * CPU_PERIOD)) if cpus else "-1")
        if pids_limit is not None and (d := _v1("pids", parent, cid)) is not None:
            _write(d / "pids.max", str(pids_limit) if pids_limit > 0 else "max")
        return
    d = _v2(parent, cid)
    if d is None:
        raise Conflict(f"container {cid[:12]} has no cgroup to update")
    if memory is not None:
        _write(d / "memory.max", str(memory) if memory > 0 else "max")
    if swap is not None and (d / "memory.swap.max").exists():
        base = memory if memory is not None else _int(d / "memory.max")
        _write(d / "memory.swap.max", "max" if swap < 0 else str(max(0, swap - base)))
    if cpu_shares is not None:  # v2 weight from v1 shares, crun's conversion
        _write(d / "cpu.weight", str(1 + ((cpu_shares - 2) * 9999) // 262142))
    if cpus is not None:
        _write(d / "cpu.max", f"{int(cpus * CPU_PERIOD)} {CPU_PERIOD}" if cpus else f"max {CPU_PERIOD}")
    if pids_limit is not None:
        _write(d / "pids.max", str(pids_limit) if pids_limit > 0 else "max")


def _memory_v1(d: Path, memory: int | None, swap: int | None) -> None:
    """memory.limit <= memsw.limit at every moment: which file goes first depends on the direction."""
    memsw = d / "memory.memsw.limit_in_bytes"
    if not memsw.exists():
        swap = None  # the host accounts no swap
    growing = memory is not None and memory > _int(d / "memory.limit_in_bytes")
    if swap is not None and growing:
        _write(memsw, str(swap))
    if memory is not None:
        _write(d / "memory.limit_in_bytes", str(memory))
    if swap is not None and not growing:
        _write(memsw, str(swap))


# ---- counters (`stats`) ----------------------------------------------------------------

def counters(parent: str, cid: str, mounts: list | None = None) -> dict[str, int]:
    """cpu_ns, memory_usage, memory_limit, block_read, block_write, pids of the cgroup.

    `mounts`: the cgroup mount table, read once for many containers (each read of
    /proc/self/mountinfo costs about what all the counters of one container do)."""
    mounts = cgroups.cgroup_mounts() if mounts is None else mounts
    out = {"cpu_ns": 0, "memory_usage": 0, "memory_limit": 0, "block_read": 0, "block_write": 0, "pids": 0}
    if (d := _v1("cpuacct", parent, cid, mounts)) is not None:
        out["cpu_ns"] = _int(d / "cpuacct.usage")
        if (m := _v1("memory", parent, cid, mounts)) is not None:
            stat = _kv(_read(m / "memory.stat"))
            # docker's usage: what the cgroup charges, less the inactive file cache it could drop
            out["memory_usage"] = max(0, _int(m / "memory.usage_in_bytes") - stat.get("total_inactive_file", 0))
            out["memory_limit"] = _int(m / "memory.limit_in_bytes")
        if (b := _v1("blkio", parent, cid, mounts)) is not None:
            out["block_read"], out["block_write"] = _blkio(_read(b / "blkio.throttle.io_service_bytes_recursive")
                                                           or _read(b / "blkio.throttle.io_service_bytes"))
        if (p := _v1("pids", parent, cid, mounts)) is not None:
            out["pids"] = _int(p / "pids.current")
        return out
    if (d2 := _v2(parent, cid, mounts)) is not None:
        out["cpu_ns"] = _kv(_read(d2 / "cpu.stat")).get("usage_usec", 0) * 1000
        stat = _kv(_read(d2 / "memory.stat"))
        out["memory_usage"] = max(0, _int(d2 / "memory.current") - stat.get("inactive_file", 0))
        lim = _read(d2 / "memory.max").strip()
        out["memory_limit"] = int(lim) if lim.isdigit() else 0
        for ln in _read(d2 / "io.stat").splitlines():
            kv = dict(f.split("=", 1) for f in ln.split()[1:] if "=" in f)
            out["block_read"] += int(kv.get("rbytes", 0))
            out["block_write"] += int(kv.get("wbytes", 0))
        out["pids"] = _int(d2 / "pids.current")
    return out


def _kv(text: str) -> dict[str, int]:
    out = {}
    for ln in text.splitlines():
        k, _, v = ln.partition(" ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def _blkio(text: str) -> tuple[int, int]:
    read = write = 0
    for ln in text.splitlines():
        f = ln.split()
        if len(f) == 3 and f[1] in ("Read", "Write") and f[2].isdigit():
            if f[1] == "Read":
                read += int(f[2])
            else:
                write += int(f[2])
    return read, write


def host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def system_cpu_ns() -> int:
    """The host's CPU time over all CPUs (the first line of /proc/stat), in nanoseconds."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields) * 1_000_000_000 // ticks
