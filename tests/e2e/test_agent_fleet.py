"""A fleet for the agent's end-to-end tests: real runtime-agent processes on one NATS,
each with its own bridge, subnet and name prefix (`dyag*`), pulling from a real
registry (CNCF distribution on loopback) that holds a busybox image pushed by skopeo."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.ports import address_from_log
from tests.support.images import busybox_layout, skopeo_env

REPO_ROOT = Path(__file__).resolve().parents[2]
CGROUP_PARENT = "/dyag-test"
GiB = 1 << 30
MiB = 1 << 20

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]


def start_registry(root: Path) -> tuple[subprocess.Popen, str]:
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "registry.yml"
    # port 0: distribution logs the address it got (at level info)
    cfg.write_text(f"version: 0.1\nlog: {{level: info}}\n"
                   f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
                   f"http: {{addr: 127.0.0.1:0}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "registry.log", "wb"), start_new_session=True)
    addr = address_from_log(root / "registry.log", r"listening on (127\.0\.0\.1:\d+)", proc)
    deadline = time.monotonic() + 15
    while True:
        try:
            urllib.request.urlopen(f"http://{addr}/v2/", timeout=1).close()
            return proc, addr
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError((root / "registry.log").read_text())
            time.sleep(0.05)


def push_busybox(root: Path, registry: str, repo: str = "library/busybox:latest") -> str:
    layout = root / "layout"
    busybox_layout(layout, root / "work")
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                    f"docker://{registry}/{repo}"], env=skopeo_env(root / "home"), check=True,
                   capture_output=True, timeout=60)
    return repo


@dataclass
class AgentProc:
    id: str
    index: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def prefix(self) -> str:
        return f"dyag{os.getpid() % 100000}{self.index}"

    @property
    def bridge(self) -> str:
        return f"dyagb{os.getpid() % 10000}{self.index}"

    def start(self, timeout: float = 60) -> None:
        mark = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", "runtime-agent"],
                                     env=self.env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while f"runtime-agent {self.id} ready" not in self.log.read_text(errors="replace")[mark:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent {self.id} did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@dataclass
class Fleet:
    root: Path
    env: dict[str, str]
    registry: str
    agents: list[AgentProc] = field(default_factory=list)

    def add_agent(self, index: int, memory: int) -> AgentProc:
        aid = f"dyag{os.getpid()}x{index}"
        env = {**self.env, "DOCKYARD_AGENT_ID": aid, "DOCKYARD_AGENT_MEMORY": str(memory),
               "DOCKYARD_SUBNET": f"10.231.{(os.getpid() % 120) * 2 + index}.0/24",
               "DOCKYARD_CGROUP_PARENT": CGROUP_PARENT}
        a = AgentProc(aid, index, env, self.root / f"agent-{index}.log")
        env["DOCKYARD_BRIDGE"] = a.bridge
        env["DOCKYARD_NET_PREFIX"] = a.prefix
        a.start()
        self.agents.append(a)
        return a

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=self.env, cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"dockyard {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def inspect(self, ref: str) -> dict:
        return json.loads(self.cli("inspect", ref).stdout)[0]

    def remove_everything(self) -> None:
        """Every container of every agent (a killed agent is started again for it), then the agents."""
        for a in self.agents:
            if a.proc is None or a.proc.poll() is not None:
                a.start()
            ids = self.cli("ps", "-a", "-q", "--no-trunc", "--host", a.id, check=False).stdout.split()
            if ids:
                self.cli("rm", "-f", *ids, check=False)
            a.stop()

    def agent_ids(self, *, lost: bool = False) -> set[str]:
        """The agents `dockyard agents` shows live (or, with `lost`, lost)."""
        return {a["agent_id"] for a in json.loads(self.cli("agents", "--json").stdout) if a["lost"] == lost}


@contextlib.contextmanager
def running_fleet(root: Path, nats_url: str, memories: dict[int, int],
                  extra_env: dict[str, str] | None = None) -> Iterator[Fleet]:
    """A registry holding busybox and one agent per `index: memory`, all removed afterwards."""
    reg_proc, registry = start_registry(root / "registry")
    push_busybox(root, registry)
    env = {**os.environ, "DOCKYARD_NATS_URL": nats_url, "DOCKYARD_REGISTRY_ADDR": registry,
           "DOCKYARD_DATA_DIR": str(root / "data"), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    f = Fleet(root, env, registry)
    try:
        for index, memory in memories.items():
            f.add_agent(index, memory)
        yield f
    finally:
        f.remove_everything()
        reg_proc.terminate()
        reg_proc.wait(10)
        remove_test_cgroup_parent()


# ---- what a container may leave on the host ---------------------------------------------

def leftovers(cid: str, agent: AgentProc) -> list[str]:
    """Every trace of container `cid` still on the host: netns, veth, rules, mounts, cgroups."""
    from services.runtime_agent.network import NetworkConfig
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {ln}" for ln in netns.splitlines() if cid in ln]
    veth = NetworkConfig(state_dir=Path("/nonexistent"), prefix=agent.prefix).veth_name(cid)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"link {veth}" for ln in links.splitlines() if f" {veth}@" in ln or f" {veth}:" in ln]
    for table in ("nat", "filter"):
        rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
        found += [f"iptables {table}: {ln}" for ln in rules.splitlines() if cid in ln]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {ln.split()[4]}" for ln in mounts.splitlines() if cid in ln]
    for hier in Path("/sys/fs/cgroup").iterdir():
        if (hier / CGROUP_PARENT.lstrip("/") / cid).exists():
            found.append(f"cgroup {hier.name}")
    return found


def remove_test_cgroup_parent() -> None:
    for hier in Path("/sys/fs/cgroup").iterdir():
        try:
            os.rmdir(hier / CGROUP_PARENT.lstrip("/"))
        except OSError:
            pass



# ---- host loss and placement (shared.placement) -------------------------------------------

@pytest.fixture(scope="module")
def fleet3(nats_url, tmp_path_factory):
    # Agent 3 is the roomiest; 1 and 2 are equal, so only locality or the agent id tells them apart.
    with running_fleet(tmp_path_factory.mktemp("fleet3"), nats_url, {1: 2 * GiB, 2: 2 * GiB, 3: 4 * GiB}) as f:
        yield f


def _agents(f: Fleet) -> dict[str, dict]:
    return {a["agent_id"]: a for a in json.loads(f.cli("agents", "--json").stdout)}


def test_a_request_no_host_fits_names_the_largest(fleet3):
    p = fleet3.cli("run", "-d", "--memory", "64g", "busybox", "true", check=False)
    assert p.returncode == 125
    assert f"no host has 65536 MiB free (largest: 4096 MiB on {fleet3.agents[2].id})" in p.stderr
    assert fleet3.cli("ps", "-a", "-q").stdout == ""  # refused before anything ran


def test_locality_breaks_a_tie_of_free_memory(fleet3):
    one, two, three = fleet3.agents
    # Agent 3 promises 3 GiB to a container: 1 GiB free, behind 1 and 2 (2 GiB each).
    fleet3.cli("run", "-d", "--name", "reserve", "--host", three.id, "--memory", "3g", "--network", "none",
               "busybox", "sleep", "600")
    deadline = time.monotonic() + 10
    while (free := _agents(fleet3)[three.id]["memory_free"]) != 1 * GiB:  # its next heartbeat says so
        assert time.monotonic() < deadline, free
        time.sleep(0.1)
    # Without locality the tie goes to the greater agent id (2); agent 1 now holds the layers.
    assert two.id > one.id
    fleet3.cli("run", "--rm", "--host", one.id, "--network", "none", "busybox", "true")
    fleet3.cli("run", "-d", "--name", "placed", "--network", "none", "busybox", "sleep", "600")
    assert fleet3.inspect("placed")["Host"] == one.id
    fleet3.cli("rm", "-f", "placed", "reserve")


def test_a_killed_agent_is_lost_avoided_and_reconciles_when_back(fleet3):
    three = fleet3.agents[2]
    fleet3.cli("run", "-d", "--name", "stays", "--host", three.id, "--network", "none", "busybox", "sleep", "600")
    fleet3.cli("run", "-d", "--name", "dies", "--host", three.id, "--network", "none", "busybox",
               "sh", "-c", "sleep 2; exit 7")
    stays, dies = fleet3.inspect("stays")["State"]["Pid"], fleet3.inspect("dies")["State"]["Pid"]
    assert fleet3.cli("run", "-d", "--name", "roomiest", "--network", "none", "busybox", "true").returncode == 0
    assert fleet3.inspect("roomiest")["Host"] == three.id  # the roomiest host, while it lives
    fleet3.cli("rm", "-f", "roomiest")

    three.stop(signal.SIGKILL)
    killed = time.monotonic()
    while three.id not in fleet3.agent_ids(lost=True):
        assert time.monotonic() - killed < 10, "a dead agent was not shown lost within 10 s"
        time.sleep(0.2)
    row = next(ln for ln in fleet3.cli("agents").stdout.splitlines() if ln.startswith(three.id))
    assert row.split()[1] == "lost"
    assert three.id not in fleet3.agent_ids()
    for i in range(3):  # placement avoids it, though it had the most free memory
        fleet3.cli("run", "-d", "--name", f"avoid{i}", "--network", "none", "busybox", "sleep", "600")
        assert fleet3.inspect(f"avoid{i}")["Host"] != three.id
    p = fleet3.cli("run", "-d", "--host", three.id, "busybox", "true", check=False)
    assert p.returncode == 125 and f"host {three.id} is lost: no heartbeat for" in p.stderr

    deadline = time.monotonic() + 15
    while os.path.exists(f"/proc/{dies}"):  # exits while its agent is away
        assert time.monotonic() < deadline
        time.sleep(0.1)
    three.start()  # same data dir, same agent id
    assert three.id in fleet3.agent_ids() and three.id not in fleet3.agent_ids(lost=True)
    st = fleet3.inspect("stays")["State"]
    assert (st["Status"], st["Pid"]) == ("running", stays) and os.path.exists(f"/proc/{stays}")
    st = fleet3.inspect("dies")["State"]
    assert (st["Status"], st["ExitCode"]) == ("exited", 7)
    fleet3.cli("rm", "-f", "stays", "dies", "avoid0", "avoid1", "avoid2")
