"""Counts of what a stack and its containers hold on the host, for before/after comparisons.

Everything is counted by the names this stack alone uses (its data dir, net prefix, cgroup
parent), so other stacks on the machine (other tests, other workers) do not disturb it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.conftest import Stack


@dataclass(frozen=True)
class Service:
    name: str
    pid: int


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


def mounts(stack: Stack) -> int:
    """Mounts in this mount namespace under the stack's data dir or named by its netns prefix."""
    marks = (str(stack.data_dir), f"/run/netns/{stack.env['DOCKYARD_NET_PREFIX']}-")
    return sum(any(m in ln for m in marks) for ln in Path("/proc/self/mountinfo").read_text().splitlines())


def netns(stack: Stack) -> int:
    prefix = f"{stack.env['DOCKYARD_NET_PREFIX']}-"
    return sum(ln.startswith(prefix) for ln in _run("ip", "netns", "list").splitlines())


def veths(stack: Stack) -> int:
    """Container veths on the stack's bridge: their names carry only 4 letters of the prefix,
    which stacks started by neighbouring pids share, so the bridge tells whose they are."""
    head = stack.env["DOCKYARD_NET_PREFIX"][:4] + "v"
    bridge = stack.env["DOCKYARD_BRIDGE"]
    return sum(f": {head}" in ln for ln in _run("ip", "-o", "link", "show", "master", bridge).splitlines())


def cgroups(stack: Stack) -> int:
    """Cgroup directories below the stack's cgroup parent, in every hierarchy."""
    rel = stack.env["DOCKYARD_CGROUP_PARENT"].strip("/")
    n = 0
    for hier in Path("/sys/fs/cgroup").iterdir():
        parent = hier / rel
        if parent.is_dir():
            n += sum(len(dirs) for _root, dirs, _files in os.walk(parent))
    return n


def iptables_rules(stack: Stack) -> int:
    """Rules in the stack's own chains or carrying its comment, in nat and filter."""
    prefix = stack.env["DOCKYARD_NET_PREFIX"]
    n = 0
    for table in ("nat", "filter"):
        for ln in _run("iptables-save", "-t", table).splitlines():
            if ln.startswith("-A ") and (f"{prefix.upper()}-" in ln or f"{prefix}:" in ln):
                n += 1
    return n


def ipam_leases(stack: Stack) -> int:
    """Addresses the agent's IPAM holds for containers (one JSON file per bridge)."""
    import json
    return sum(len(json.loads(p.read_bytes()).get("allocations", {}))
               for p in (stack.data_dir / "runtime-agent").glob("*/network/ipam-*.json"))


def agent_paths(stack: Stack) -> set[str]:
    """Files and directories under the runtime-agent's data dir (containers, snapshots, state)."""
    root = stack.data_dir / "runtime-agent"
    return {os.path.relpath(os.path.join(r, n), root) for r, dirs, files in os.walk(root) for n in dirs + files}


def agent_files(stack: Stack) -> int:
    return len(agent_paths(stack))


def services(stack: Stack) -> list[Service]:
    """The stack's service processes: the descendants of `dockyard up`, shims and containers aside."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out = []
    for pid in children.get(stack.proc.pid, []):
        try:
            cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in cmd if w]
        if "serve" in words:
            out.append(Service(words[words.index("serve") + 1], pid))
        elif words and words[0].endswith("nats-server"):
            out.append(Service("nats-server", pid))
    return sorted(out, key=lambda s: s.name)


def process(pid: int) -> dict[str, int]:
    """fds, threads and RSS (KiB) of one process."""
    status = dict(ln.split(":", 1) for ln in (Path("/proc") / str(pid) / "status").read_text().splitlines()
                  if ":" in ln)
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(status["Threads"]),
            "rss_kib": int(status["VmRSS"].split()[0])}


def host(stack: Stack) -> dict[str, int]:
    """The kernel objects and files of the stack's containers."""
    return {"mounts": mounts(stack), "netns": netns(stack), "veths": veths(stack), "cgroups": cgroups(stack),
            "iptables": iptables_rules(stack), "ipam_leases": ipam_leases(stack), "agent_files": agent_files(stack)}


def container_traces(stack: Stack, cid: str) -> list[str]:
    """What container `cid` still holds on the host: mounts, netns, veth, rules, cgroups."""
    from services.runtime_agent.network import NetworkConfig
    prefix = stack.env["DOCKYARD_NET_PREFIX"]
    found = [f"mount {ln.split()[4]}" for ln in Path("/proc/self/mountinfo").read_text().splitlines() if cid in ln]
    found += [f"netns {ln}" for ln in _run("ip", "netns", "list").splitlines() if cid in ln]
    veth = NetworkConfig(state_dir=Path("/nonexistent"), prefix=prefix).veth_name(cid)
    found += [f"link {veth}" for ln in _run("ip", "-o", "link").splitlines() if f": {veth}" in ln]
    for table in ("nat", "filter"):
        found += [f"iptables {table}: {ln}" for ln in _run("iptables-save", "-t", table).splitlines()
                  if cid in ln]
    rel = stack.env["DOCKYARD_CGROUP_PARENT"].strip("/")
    found += [f"cgroup {h.name}" for h in Path("/sys/fs/cgroup").iterdir() if (h / rel / cid).exists()]
    return found


def kv_containers(stack: Stack) -> dict[str, int]:
    """Live keys and stored messages (records, purge markers) of the `dockyard-containers` bucket."""
    import asyncio

    async def count() -> dict[str, int]:
        import nats.js.errors
        from shared import bus, subjects
        from shared.bus import TypedKV
        from shared.messages.agent import Container
        nc = await bus.connect(stack.nats_url, name="soak-counts")
        try:
            try:
                kv = await nc.jetstream().key_value(subjects.KV_CONTAINERS)
            except nats.js.errors.BucketNotFoundError:
                return {"kv_keys": 0, "kv_messages": 0}
            info = await nc.jetstream().stream_info(f"KV_{subjects.KV_CONTAINERS}")
            return {"kv_keys": len(await TypedKV(kv, Container).keys()), "kv_messages": info.state.messages}
        finally:
            await nc.drain()

    return asyncio.run(count())
