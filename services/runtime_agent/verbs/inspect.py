"""`top` and `stats`: a running container's processes and counters, from its cgroup.

`top` runs the host's `ps` with the user's options (docker's way: pids as the host sees
them) and keeps the rows whose PID is in the container's cgroup. `stats` reads the
cgroup's counters and the container's network namespace (its /proc/<pid>/net/dev: the
veth's far end) and answers two samples, so one request gives a CPU %: the last one it
took for that container, or (the first time) one at the container's start.
"""

from __future__ import annotations

import asyncio
import os
import time

from services.runtime_agent.verbs import cgroupctl
from shared.errors import Conflict, InvalidArgument, Unavailable
from shared.messages.agent import Container
from shared.messages.verbs import Stats, TopReply
from shared.runtime import cgroups

_PRE_MAX_AGE = 10.0  # a kept sample younger than this is the "before" of the next one


def cgroup_pids(parent: str, cid: str) -> set[int]:
    for controller in ("pids", "memory", "cpuacct", "freezer"):
        d = cgroups.controller_dir(controller, f"{parent}/{cid}")
        if d is not None and (d / "cgroup.procs").exists():
            return {int(x) for x in (d / "cgroup.procs").read_text().split()}
    for m in cgroups.cgroup_mounts():
        p = m.path / parent.strip("/") / cid / "cgroup.procs"
        if m.version == 2 and p.exists():
            return {int(x) for x in p.read_text().split()}
    return set()


async def top(c: Container, parent: str, ps_args: list[str]) -> TopReply:
    if c.state.status != "running":
        raise Conflict(f"container {c.id[:12]} is not running")
    for a in ps_args:
        if "\0" in a or len(a) > 256:
            raise InvalidArgument("invalid ps option")
    args = ps_args or ["-ef"]
    try:
        proc = await asyncio.create_subprocess_exec("ps", *args, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE,
                                                    env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    except FileNotFoundError as e:
        raise Unavailable("the agent's host has no ps") from e
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise InvalidArgument(f"ps {' '.join(args)} failed: {err.decode(errors='replace').strip()}")
    pids = cgroup_pids(parent, c.id)
    return parse_ps(out.decode(errors="replace"), pids)


def parse_ps(output: str, pids: set[int]) -> TopReply:
    """docker's parsePSOutput: the header's PID column picks the rows; CMD keeps its spaces."""
    lines = output.splitlines()
    if not lines:
        raise InvalidArgument("ps printed nothing")
    titles = lines[0].split()
    if "PID" not in titles:
        raise InvalidArgument("couldn't find PID field in ps output")
    at = titles.index("PID")
    procs = []
    for ln in lines[1:]:
        fields = ln.split()
        if len(fields) <= at:
            continue
        try:
            pid = int(fields[at])
        except ValueError:
            continue
        if pid in pids:
            # the last column takes the rest of the line (a command with its arguments)
            head = ln.split(None, len(titles) - 1)
            procs.append(head if len(head) == len(titles) else fields)
    return TopReply(titles=titles, processes=procs)


def _net(pid: int) -> tuple[int, int]:
    """Bytes received and sent by the namespace of `pid`, loopback left out."""
    rx = tx = 0
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return 0, 0
    for ln in lines:
        name, _, rest = ln.partition(":")
        if name.strip() == "lo":
            continue
        f = rest.split()
        if len(f) >= 9:
            rx += int(f[0])
            tx += int(f[8])
    return rx, tx


def sample(c: Container, parent: str, mounts: list | None = None) -> Stats:
    now = time.time()
    if c.state.status != "running":
        return Stats(id=c.id, name=c.name, read=now, running=False)
    k = cgroupctl.counters(parent, c.id, mounts)
    rx, tx = _net(c.state.pid) if c.network.mode == "bridge" else (0, 0)
    limit = k["memory_limit"]
    host = cgroupctl.host_memory()
    return Stats(id=c.id, name=c.name, read=now, cpu_ns=k["cpu_ns"], system_ns=cgroupctl.system_cpu_ns(),
                 online_cpus=os.cpu_count() or 1, memory_usage=k["memory_usage"],
                 memory_limit=limit if 0 < limit < host else host, net_rx=rx, net_tx=tx,
                 block_read=k["block_read"], block_write=k["block_write"], pids=k["pids"])


def since_start(c: Container, cur: Stats) -> Stats:
    """A "before" at the container's start (nothing used yet): the first CPU % is its average so
    far, as podman's first sample is, instead of a wait for a second sample."""
    from shared.messages.agent import unix_time
    started = unix_time(c.state.started_at) or cur.read
    elapsed = max(0.0, cur.read - started)
    return Stats(id=cur.id, name=cur.name, read=started, running=cur.running, cpu_ns=0,
                 system_ns=max(0, cur.system_ns - int(elapsed * 1e9 * cur.online_cpus)),
                 online_cpus=cur.online_cpus)


class Sampler:
    """Keeps each container's last sample, the `before` of its next one."""

    def __init__(self, parent: str):
        self.parent = parent
        self._last: dict[str, Stats] = {}

    async def pairs(self, cs: list[Container]) -> list[tuple[Stats, Stats]]:
        """(before, now) of each container, all sampled in one trip off the loop."""
        if not cs:
            return []

        def sample_all() -> list[Stats]:
            mounts = cgroups.cgroup_mounts()
            return [sample(c, self.parent, mounts) for c in cs]
        now = await asyncio.to_thread(sample_all)
        return [self._pair(c, cur) for c, cur in zip(cs, now)]

    def _pair(self, c: Container, cur: Stats) -> tuple[Stats, Stats]:
        pre = self._last.get(c.id)
        if pre is None or cur.read - pre.read > _PRE_MAX_AGE or not pre.running:
            pre = since_start(c, cur)
        if len(self._last) > 4096:
            self._last.clear()
        self._last[c.id] = cur
        return pre, cur
