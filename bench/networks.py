"""User networks benchmark: dockyard against podman (netavark + aardvark-dns), same host, same image.

    .venv/bin/python bench/networks.py [--rounds 5] [--lookups 100]

Set-up as bench/run.py (nats-server, one runtime-agent, a CNCF registry with busybox,
podman with private configs), then on each side a user network (`network create`) with
a busybox httpd named `web` on it. Alternating which tool goes first each round:

  start-usernet  run --rm --network NET IMAGE true
  dns-lookup     inside one container on NET: N x `nslookup web`, timed by the
                 container's /proc/uptime (10 ms ticks), per lookup
  dns-server     500 A queries for `web` from the host straight to each embedded DNS
                 server (the network's gateway:53), one at a time, per query
  dns-forward    the same (2 lookups, first round only) for a name neither knows
                 (`nothere.invalid`), which both forward to the host's resolvers: it
                 measures those when none answers, so it is printed apart

Prints medians and the ratios dockyard/podman (target: every ratio <= 0.7).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import run as runbench  # noqa: E402  bench/run.py: podman's set-up and the host's restore
from examples.busybox import busybox_layout, busybox_rootfs, skopeo_env, tar_dir  # noqa: E402
from shared.natsserver import EmbeddedNats, free_port  # noqa: E402

DOCKYARD = runbench.DOCKYARD
sh = runbench.sh

# Inside a container: N lookups, the elapsed seconds per lookup on stdout.
_LOOP = ('read t0 _ < /proc/uptime; i=0; while [ $i -lt {n} ]; do nslookup {name} >/dev/null 2>&1; '
         'i=$((i+1)); done; read t1 _ < /proc/uptime; echo "$t0 $t1" | awk \'{{print ($2-$1)/{n}}}\'')


def query_latency(server: str, name: str, n: int) -> float:
    """Seconds per A query for `name` sent from the host straight to `server`:53, one at a time."""
    import socket
    from dnslib import DNSRecord
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.bind((server, 0))  # from the gateway itself: an address inside the network, which dockyard's DNS requires
    s.connect((server, 53))
    try:
        packets = [DNSRecord.question(name).pack() for _ in range(n)]
        t0 = time.perf_counter()
        for p in packets:
            s.send(p)
            s.recv(4096)
        return (time.perf_counter() - t0) / n
    finally:
        s.close()


class Side:
    def __init__(self, name: str, argv: list[str], env: dict, image: str, net: str):
        self.name, self.argv, self.env, self.image, self.net = name, argv, env, image, net

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh([*self.argv, *args], self.env, check=check)

    def start(self) -> float:
        return runbench.timed([*self.argv, "run", "--rm", "--network", self.net, self.image, "true"], self.env)

    def lookups(self, name: str, n: int) -> float:
        out = self.run("run", "--rm", "--network", self.net, self.image, "sh", "-c", _LOOP.format(n=n, name=name))
        return float(out.stdout.split()[-1])

    def check_resolves(self) -> None:
        out = self.run("run", "--rm", "--network", self.net, self.image, "sh", "-c", "nslookup web", check=False)
        if "Address" not in out.stdout.split("Name:", 1)[-1]:
            raise RuntimeError(f"{self.name}: `web` does not resolve on {self.net}:\n{out.stdout}{out.stderr}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lookups", type=int, default=100)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/networks.py needs root", file=sys.stderr)
        return 2
    ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    chains_before = runbench.netavark_chains()
    tmp = Path(tempfile.mkdtemp(prefix="dynet-bench-"))
    procs: list[subprocess.Popen] = []
    nats = EmbeddedNats(tmp / "nats")
    agent_env = podman_env = None
    try:
        nats.start()
        regport = free_port()
        (tmp / "registry.yml").write_text(
            f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {tmp / 'reg'}}}}}\n"
            f"http: {{addr: 127.0.0.1:{regport}}}\n")
        procs.append(subprocess.Popen(["docker-registry", "serve", str(tmp / "registry.yml")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        busybox_layout(tmp / "layout", tmp / "work")
        time.sleep(0.5)
        sh(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp / 'layout'}:latest",
            f"docker://127.0.0.1:{regport}/library/busybox:latest"], skopeo_env(tmp / "home"))
        env = {**os.environ, "DOCKYARD_NATS_URL": nats.url, "DOCKYARD_REGISTRY_ADDR": f"127.0.0.1:{regport}",
               "DOCKYARD_DATA_DIR": str(tmp / "dockyard")}
        agent_env = {**env, "DOCKYARD_AGENT_ID": "netbench", "DOCKYARD_BRIDGE": "dynbench0",
                     "DOCKYARD_SUBNET": "10.234.0.0/24", "DOCKYARD_NET_PREFIX": "dynbench",
                     "DOCKYARD_NETWORK_POOL": "10.234.16.0/20"}
        log = open(tmp / "agent.log", "wb")
        agent = subprocess.Popen([*DOCKYARD, "serve", "runtime-agent"], env=agent_env, cwd=REPO,
                                 stdout=log, stderr=subprocess.STDOUT)
        procs.append(agent)
        deadline = time.monotonic() + 60
        while b"ready" not in (tmp / "agent.log").read_bytes():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp / "agent.log").read_text())
            time.sleep(0.05)
        (tmp / "rootfs.tar").write_bytes(tar_dir(busybox_rootfs(tmp / "podroot")))
        podman_env = runbench.setup_podman(tmp / "podman", regport, tmp / "rootfs.tar")
        sh([sys.executable, "-m", "compileall", "-q", "shared", "services"])
        dockyard = Side("dockyard", DOCKYARD, env, "busybox", "dynetbench")
        podman = Side("podman", ["podman"], podman_env, "localhost/busybox", "dynetbench")
        dockyard.run("network", "create", "dynetbench")
        # podman 4.3 cannot name the bridge on its command line: its config file can (and must
        # be named after the network, or podman skips it).
        (tmp / "podman" / "networks" / "dynetbench.json").write_text(json.dumps({
            "name": "dynetbench", "id": "a1" * 32, "driver": "bridge", "network_interface": "dypeer1",
            "created": "2025-01-01T00:00:00Z", "subnets": [{"subnet": "10.234.48.0/24", "gateway": "10.234.48.1"}],
            "ipv6_enabled": False, "internal": False, "dns_enabled": True, "ipam_options": {"driver": "host-local"}}))
        for side in (dockyard, podman):
            side.run("run", "-d", "--name", "web", "--network", side.net, side.image,
                     "httpd", "-f", "-p", "8080", "-h", "/etc")
            side.check_resolves()
            side.start()  # warm-up
        dockyard.dns = json.loads(dockyard.run("network", "inspect", "dynetbench").stdout)[0]["IPAM"]["Config"][0]["Gateway"]
        podman.dns = "10.234.48.1"

        load_before = os.getloadavg()
        cases = {"start-usernet": lambda s: s.start(), "dns-lookup": lambda s: s.lookups("web", args.lookups),
                 "dns-server": lambda s: query_latency(s.dns, "web", 500)}
        times: dict[tuple[str, str], list[float]] = {}
        forward: dict[str, list[float]] = {"dockyard": [], "podman": []}
        for r in range(args.rounds):
            order = (dockyard, podman) if r % 2 == 0 else (podman, dockyard)
            for case, fn in cases.items():
                for s in order:
                    times.setdefault((case, s.name), []).append(fn(s))
            if r == 0:  # slow where the host's resolvers do not answer: a few, once
                for s in order:
                    forward[s.name].append(s.lookups("nothere.invalid", 2))
        load = os.getloadavg()
        print(f"user networks: dockyard vs podman, {args.rounds} rounds, medians in seconds "
              f"(load {load_before[0]:.2f} before, {load[0]:.2f} after)")
        print(f"{'case':<15}{'dockyard':>10}{'podman':>10}{'ratio':>8}")
        worst = 0.0
        for case in cases:
            d = statistics.median(times[(case, "dockyard")])
            p = statistics.median(times[(case, "podman")])
            worst = max(worst, d / p)
            print(f"{case:<15}{d:>10.5f}{p:>10.5f}{d / p:>8.2f}")
        d, p = statistics.median(forward["dockyard"]), statistics.median(forward["podman"])
        print(f"{'dns-forward':<15}{d:>10.4f}{p:>10.4f}{d / p if p else float('nan'):>8.2f}   (reported apart)")
        print(f"worst ratio {worst:.2f} (target <= 0.7)")
        return 0
    finally:
        if agent_env is not None:
            ids = sh([*DOCKYARD, "ps", "-a", "-q", "--no-trunc"], agent_env, check=False).stdout.split()
            if ids:
                sh([*DOCKYARD, "rm", "-f", *ids], agent_env, check=False)
            sh([*DOCKYARD, "network", "rm", "dynetbench"], agent_env, check=False)
        if podman_env is not None:
            sh(["podman", "rm", "-af"], podman_env, check=False)
            sh(["podman", "network", "rm", "-f", "dynetbench"], podman_env, check=False)
            sh(["podman", "system", "reset", "-f"], podman_env, check=False)
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        nats.stop()
        runbench.restore_host(ip_forward, chains_before)
        for link in ("dypeer0", "dypeer1"):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
