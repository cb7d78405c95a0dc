"""Hosts of a fleet on one machine: one network namespace per host on a bridge the test makes.

Names carry this process's pid and a counter, and the /24 is chosen so that no route of the
machine overlaps it. Teardown runs even when a test fails: processes first (a live process
keeps a deleted namespace alive), then the containers (they outlive their agent on purpose)
with the cgroups the agents made, then namespaces (their veth ends go with them) and the
bridge.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_fleets = itertools.count()


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 under 10.77.0.0/16 that no route of this machine touches."""
    used = [ipaddress.ip_network(r.split()[0], strict=False)
            for r in _sh("ip", "-4", "route", "show", "table", "all").stdout.splitlines()
            if r and r.split()[0][0].isdigit()]
    start = os.getpid() % 200
    for i in range(256):
        net = ipaddress.ip_network(f"10.77.{(start + i) % 256}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free /24 under 10.77.0.0/16")


@dataclass
class Host:
    n: int
    ns: str
    addr: str
    data_dir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def _enter(self) -> list[str]:
        """A command prefix: this host's network namespace, with a /sys that shows its links
        (`ip netns exec` mounts one too, but without the cgroup hierarchies the agent needs)."""
        hold = self.data_dir / ".cgroup"
        hold.mkdir(exist_ok=True)
        return ["nsenter", f"--net=/run/netns/{self.ns}", "unshare", "-m", "--propagation", "private", "sh", "-c",
                'mount --rbind /sys/fs/cgroup "$0" && mount -t sysfs sysfs /sys && '
                'mount --move "$0" /sys/fs/cgroup && exec "$@"', str(hold)]

    @property
    def agent_id(self) -> str:
        return self.env["DOCKYARD_AGENT_ID"]

    def up(self, *args: str) -> subprocess.Popen:
        """`dockyard up ARGS` in this host's namespace; returns once stack.json names it up, or raises."""
        stack_file = self.data_dir / "stack.json"
        stack_file.unlink(missing_ok=True)
        log = open(self.data_dir / "up.log", "ab")
        proc = subprocess.Popen(self._enter + [sys.executable, "-m", "services.cli.main", "up",
                                 *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 90
        while not stack_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"up on {self.ns} failed ({proc.poll()}):\n{self.log()}")
            time.sleep(0.1)
        return proc

    def run_up(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """`dockyard up ARGS` expected to exit by itself (a refused join)."""
        return subprocess.run(self._enter + [sys.executable, "-m", "services.cli.main", "up",
                               *args], env=self.env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout)

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        p = subprocess.run(self._enter + [sys.executable, "-m", "services.cli.main", *args],
                           env=self.env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"[{self.ns}] dockyard {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def exec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self._enter + [*argv], capture_output=True, text=True, timeout=timeout)

    def log(self, name: str = "") -> str:
        p = self.data_dir / ("up.log" if not name else f"logs/{name}.log")
        try:
            return p.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    @property
    def stack(self) -> dict:
        return json.loads((self.data_dir / "stack.json").read_text())


@dataclass
class Fleet:
    tag: str
    subnet: ipaddress.IPv4Network
    bridge: str
    hosts: list[Host] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return str(self.subnet[254])


def _make_host(fleet: Fleet, n: int, root: Path) -> None:
    """Host n, in `fleet.hosts` before anything of it exists (teardown then finds every part)."""
    ns, veth = f"{fleet.tag}h{n}", f"{fleet.tag}v{n}"
    addr = str(fleet.subnet[n])
    data = root / f"h{n}"
    data.mkdir()
    # Each host's own container network and cgroup parent; the slot keeps subnets apart across runs.
    slot = (os.getpid() * 8 + n) % (40 * 256)
    name = f"{fleet.tag}c{n}"
    env = {**os.environ, "DOCKYARD_DATA_DIR": str(data), "DOCKYARD_AGENT_ID": f"{fleet.tag}-h{n}",
           "DOCKYARD_BRIDGE": name, "DOCKYARD_NET_PREFIX": name, "DOCKYARD_CGROUP_PARENT": f"/{name}",
           "DOCKYARD_SUBNET": f"10.{200 + slot // 256}.{slot % 256}.0/24", "PYTHONUNBUFFERED": "1",
           "XDG_CONFIG_HOME": str(data / "config"), "DOCKER_CONFIG": str(data / "docker-config")}
    for k in ("DOCKYARD_NATS_URL", "DOCKYARD_REGISTRY_ADDR", "DOCKYARD_CONTEXT", "DOCKYARD_CREDS",
              "DOCKYARD_LAYER_STORE_ADDR", "DOCKYARD_NATS_CA"):
        env.pop(k, None)
    fleet.hosts.append(Host(n=n, ns=ns, addr=addr, data_dir=data, env=env))
    _sh("ip", "netns", "add", ns)
    _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
    _sh("ip", "link", "set", f"{veth}p", "netns", ns)
    _sh("ip", "link", "set", veth, "master", fleet.bridge, "up")
    for cmd in (["link", "set", "lo", "up"], ["link", "set", f"{veth}p", "name", "eth0"],
                ["addr", "add", f"{addr}/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                ["route", "add", "default", "via", fleet.gateway]):
        _sh("ip", "-n", ns, *cmd)


def _kill_cgroup(parent: str) -> None:
    """Every process under the cgroup `parent` (the host's containers: they outlive their agent
    by design) killed, then the cgroups removed, innermost first."""
    dirs = [d for hier in Path("/sys/fs/cgroup").iterdir() if (hier / parent).is_dir()
            for d in (hier / parent).glob("**/")]
    deadline = time.monotonic() + 10
    for d in sorted(dirs, key=lambda d: -len(d.parts)):
        while time.monotonic() < deadline:
            try:
                pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            except OSError:
                break
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        try:
            os.rmdir(d)
        except OSError:
            pass


def _kill_orphan_nats(h: Host) -> None:
    """The nats-server of an `up` a test killed -9 (it runs in a session of its own, so it
    outlives its `up`); a clean stop removed stack.json with it."""
    try:
        pid = json.loads((h.data_dir / "stack.json").read_text()).get("nats_pid", 0)
        alive = pid and b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if alive:
        os.kill(pid, signal.SIGKILL)


def _teardown(fleet: Fleet) -> None:
    for h in fleet.hosts:  # every host told first: their shutdowns overlap
        for p in h.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    for h in fleet.hosts:
        h.stop()
        _kill_orphan_nats(h)
    for h in fleet.hosts:
        _kill_cgroup(h.env["DOCKYARD_CGROUP_PARENT"].lstrip("/"))
        _sh("ip", "netns", "del", h.ns, check=False)
        # The host's containers' namespaces: mounted in the host's own mount namespace (gone
        # with it), their files under /run/netns stay unless removed.
        for left in Path("/run/netns").glob(f"{h.env['DOCKYARD_NET_PREFIX']}-*"):
            _sh("ip", "netns", "del", left.name, check=False)
            left.unlink(missing_ok=True)
        _sh("ip", "link", "del", f"{fleet.tag}v{h.n}", check=False)  # only if it never moved into the namespace
    _sh("ip", "link", "del", fleet.bridge, check=False)


def new_fleet(n: int, root: Path, made: list[Fleet]) -> Fleet:
    """n hosts (namespaces h1..hn on a fresh bridge), data dirs under `root`, nothing started;
    appended to `made` before anything is created, so that `teardown` finds what a failure left."""
    tag = f"dyf{os.getpid() % 46656:x}{next(_fleets)}"[:9]
    fleet = Fleet(tag=tag, subnet=_free_subnet(), bridge=f"{tag}br")
    made.append(fleet)
    _sh("ip", "link", "add", fleet.bridge, "type", "bridge")
    _sh("ip", "addr", "add", f"{fleet.gateway}/24", "dev", fleet.bridge)
    _sh("ip", "link", "set", fleet.bridge, "up")
    for i in range(1, n + 1):
        _make_host(fleet, i, root)
    return fleet


def teardown(made: list[Fleet]) -> None:
    for f in made:
        _teardown(f)


@pytest.fixture
def make_fleet(tmp_path):
    """`make_fleet(n)`: n hosts (namespaces h1..hn on a fresh bridge), nothing started on them yet."""
    made: list[Fleet] = []
    try:
        yield lambda n: new_fleet(n, tmp_path, made)
    finally:
        teardown(made)
