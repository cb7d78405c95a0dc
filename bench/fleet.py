"""A fleet on one machine (hosts as network namespaces): how fast a host joins, how fast a lost
one is noticed, and what `run` costs on a remote host against the local one.

    .venv/bin/python bench/fleet.py [--joins 2] [--runs 10] [--no-nats]   (root: namespaces, cgroups)

Host 1 is the first node (every service, TLS on the bus); hosts 2.. join with a token each and
run a runtime-agent, offering more memory than host 1 so that placement prefers them. Prints:
- join: from starting `up --join` to the host taking placements (a `run` without `--host`
  lands on it), per joined host;
- node lost: from `kill -9` of a joined host's own nats-server to a `run` on that host
  succeeding (its agent reconnects to the first node's NATS);
- lost: from `kill -9` of every dockyard process of a host to `agents` showing it lost;
- run: the median wall time of `dockyard run --rm --host H IMAGE true` from host 1's CLI,
  H = host 1 (local agent) and H = host 2 (remote agent), and their ratio.
The fleet is torn down (processes, containers, cgroups, namespaces, bridge) even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fleet.conftest import new_fleet, teardown  # noqa: E402
from tests.fleet.pushing import push_busybox  # noqa: E402

GiB = 1 << 30
IMAGE = "fleet/busybox:1"


def _agents(h) -> dict[str, dict]:
    return {a["agent_id"]: a for a in json.loads(h.cli("--json", "agents").stdout)}


def _until(check, timeout: float, poll: float = 0.05) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("timed out")
        time.sleep(poll)
    return time.monotonic() - t0


def _placed_on(h1, want: str) -> bool:
    """A `run -d` without --host; True if it landed on `want` (it is removed either way)."""
    cid = h1.cli("run", "-d", IMAGE, "sleep", "30", check=False).stdout.strip()
    if not cid:
        return False
    ps = {c["id"]: c["host"] for c in json.loads(h1.cli("--json", "ps", "-a").stdout)}
    h1.cli("rm", "-f", cid, check=False)
    return ps.get(cid) == want


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--joins", type=int, default=2, help="hosts that join (one sample each)")
    ap.add_argument("--runs", type=int, default=10, help="`run` samples per host")
    ap.add_argument("--no-nats", action="store_true", help="joined hosts run no NATS node of their own")
    args = ap.parse_args()
    made: list = []
    root = Path(tempfile.mkdtemp(prefix="dyfleet-bench-"))
    try:
        fl = new_fleet(1 + args.joins, root, made)
        h1, joiners = fl.hosts[0], fl.hosts[1:]
        h1.env["DOCKYARD_AGENT_MEMORY"] = str(4 * GiB)
        h1.up("--listen", h1.addr, "--nats-port", "4222", "--registry-addr", f"{h1.addr}:5000")
        push_busybox(h1, root, f"{h1.addr}:5000/{IMAGE}")

        joins = []
        for i, h in enumerate(joiners):
            h.env["DOCKYARD_AGENT_MEMORY"] = str((8 + i) * GiB)  # the newest is the roomiest
            token = h1.cli("fleet", "token").stdout.strip()
            t0 = time.monotonic()
            h.up("--join", h1.addr, "--token", token, "--listen", h.addr, "--services", "runtime-agent",
                 *(["--no-nats"] if args.no_nats else []))
            _until(lambda: h.agent_id in _agents(h1), 60)
            _until(lambda: _placed_on(h1, h.agent_id), 60, poll=0)
            joins.append(time.monotonic() - t0)

        remote = joiners[0]
        times: dict[str, list[float]] = {}
        for h in (h1, remote):
            h1.cli("run", "--rm", "--host", h.agent_id, IMAGE, "true")  # the pull, not measured
            times[h.agent_id] = []
            for _ in range(args.runs):
                t0 = time.monotonic()
                h1.cli("run", "--rm", "--host", h.agent_id, IMAGE, "true")
                times[h.agent_id].append(time.monotonic() - t0)

        failover = None
        if not args.no_nats:  # the remote host's own NATS node lost: its agent goes on over the first node's
            os.kill(remote.stack["nats_pid"], signal.SIGKILL)
            failover = _until(lambda: h1.cli("run", "--rm", "--host", remote.agent_id, IMAGE, "true",
                                             check=False).returncode == 0, 60, poll=0)

        stack = remote.stack
        t0 = time.monotonic()
        for pid in [stack["up_pid"], *([stack["nats_pid"]] if stack["nats_pid"] else []), *stack["pids"].values()]:
            os.kill(pid, signal.SIGKILL)
        lost = _until(lambda: _agents(h1)[remote.agent_id]["lost"], 30, poll=0.1)
        remote.stop()

        local_ms = statistics.median(times[h1.agent_id]) * 1000
        remote_ms = statistics.median(times[remote.agent_id]) * 1000
        print(f"join -> taking placements: {', '.join(f'{t:.2f}s' for t in joins)}"
              f" (median {statistics.median(joins):.2f}s, {len(joins)} hosts)")
        if failover is not None:
            print(f"node lost, run works:      {failover:.2f}s after kill -9 of host 2's nats-server (one `run`)")
        print(f"lost host noticed:         {lost:.2f}s after kill -9 (stale after 8 s, heartbeat every 2 s)")
        print(f"run --rm true, local:      {local_ms:.0f} ms median of {args.runs}")
        print(f"run --rm true, remote:     {remote_ms:.0f} ms median of {args.runs}"
              f"  (remote/local {remote_ms / local_ms:.2f}x)")
        return 0
    finally:
        teardown(made)
        subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    sys.exit(main())
