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

from tests.support.ports import address_from_log
from tests.support.images import busybox_layout, skopeo_env

REPO_ROOT = Path(__file__).resolve().parents[2]
CGROUP_PARENT = "/dyag-test"


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

    def agent_ids(self) -> set[str]:
        return {a["agent_id"] for a in json.loads(self.cli("agents", "--json").stdout)}


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
