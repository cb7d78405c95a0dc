"""A real stack for end-to-end tests: `dockyard up` in a subprocess, CLI helpers, skopeo."""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared import credentials
from shared.permissions import Permissions

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    data_dir: Path
    nats_url: str
    registry_addr: str
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)
    own_cgroup_parent: str = ""  # made for this stack, removed with it

    @property
    def registry_url(self) -> str:
        return f"http://{self.registry_addr}"

    @property
    def admin_password(self) -> str:
        return (self.data_dir / "admin-password").read_text().strip()

    @property
    def admin_creds(self) -> str:
        return f"admin:{self.admin_password}"

    def cli(self, *args: str, input: str | None = None, timeout: float = 120, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `dockyard ARGS` against this stack, as a user would (`env`: settings of that user)."""
        p = subprocess.run([sys.executable, "-m", "services.cli.main", *args], env={**self.env, **(env or {})},
                           input=input, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"dockyard {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def log(self, service: str) -> str:
        try:
            return (self.data_dir / "logs" / f"{service}.log").read_text(errors="replace")
        except OSError:
            return ""


_test_authority: Path | None = None


def _seed_authority(data_dir: Path) -> None:
    """Give the stack the session's operator and account keys before its first start.

    `up` then makes its own service and admin credentials as on any first start; the test
    process itself connects (bus.connect(stack.nats_url)) with one all-permissions test
    credential from the same keys, in DOCKYARD_CREDS, which every stack of the session trusts.
    The CLI runs without it and finds the data dir's admin.creds, as a user's would.
    """
    global _test_authority
    if _test_authority is None:
        root = tempfile.mkdtemp(prefix="dyauth-")
        atexit.register(shutil.rmtree, root, True)
        _test_authority = Path(root) / credentials.CREDENTIALS_DIR
        authority = credentials.Authority(credentials.credentials_dir(_test_authority.parent))
        test_creds = _test_authority / "test.creds"
        credentials.write_secret(test_creds, authority.issue("test", Permissions((">",), (">",))).encode())
        os.environ["DOCKYARD_CREDS"] = str(test_creds)
    target = credentials.credentials_dir(data_dir)
    for p in _test_authority.iterdir():
        if p.suffix in (".nk", ".pub"):
            shutil.copy2(p, target / p.name)


_stacks_started = itertools.count()


def _base36(n: int) -> str:
    digits = ""
    while True:
        n, d = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[d] + digits
        if not n:
            return digits


def isolation_env(n: int) -> dict[str, str]:
    """Names no other live stack on this machine uses (another test process, an xdist worker, a
    developer's own `dockyard up`): bridge, container name prefix and cgroup parent carry this
    process's pid; the subnet is one of 10240 /24s picked by it."""
    tag = f"dys{_base36(os.getpid())}{n}"  # within the agent's 12 characters for a prefix
    slot = (os.getpid() * 4 + n) % (40 * 256)
    pool = (os.getpid() * 4 + n) % 4096  # networks: `network create` takes /27s of this /24
    return {"DOCKYARD_BRIDGE": tag, "DOCKYARD_NET_PREFIX": tag, "DOCKYARD_CGROUP_PARENT": f"/{tag}",
            "DOCKYARD_SUBNET": f"10.{160 + slot // 256}.{slot % 256}.0/24",
            "DOCKYARD_NETWORK_POOL": f"172.{16 + pool // 256}.{pool % 256}.0/24", "DOCKYARD_NETWORK_POOL_SIZE": "27"}


def start_stack(data_dir: Path, *, only: list[str] | None = None, timeout: float = 90,
                extra_env: dict[str, str] | None = None) -> Stack:
    """`dockyard up` with every port chosen by the kernel (0), read back from stack.json.

    The CLI of the stack gets only its data dir and finds NATS and the registry from there,
    as a user's would; its contexts file is private to the stack. `extra_env`: settings of
    this stack's services (DOCKYARD_...)."""
    own = isolation_env(next(_stacks_started))
    _seed_authority(data_dir)
    env = {**own, **os.environ, **(extra_env or {}), "DOCKYARD_DATA_DIR": str(data_dir),
           "DOCKER_CONFIG": str(data_dir / "docker-config"), "XDG_CONFIG_HOME": str(data_dir / "config"),
           "PYTHONUNBUFFERED": "1"}
    for k in ("DOCKYARD_NATS_URL", "DOCKYARD_REGISTRY_ADDR", "DOCKYARD_CONTEXT", "DOCKYARD_CREDS"):
        env.pop(k, None)
    args = [sys.executable, "-m", "services.cli.main", "up", "--nats-port", "0", "--registry-addr", "127.0.0.1:0"]
    for s in only or []:
        args += ["--only", s]
    data_dir.mkdir(parents=True, exist_ok=True)
    out = open(data_dir / "up.log", "wb")
    proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    stack_file = data_dir / "stack.json"
    while not stack_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            raise RuntimeError(f"dockyard up failed:\n{(data_dir / 'up.log').read_text(errors='replace')}")
        time.sleep(0.1)
    info = json.loads(stack_file.read_text())
    return Stack(data_dir=data_dir, nats_url=info["nats_url"], registry_addr=info["registry"], proc=proc, env=env,
                 own_cgroup_parent="" if "DOCKYARD_CGROUP_PARENT" in os.environ else own["DOCKYARD_CGROUP_PARENT"])


def stop_stack(stack: Stack) -> int:
    if stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGTERM)
        try:
            code = stack.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            code = stack.proc.wait()
    else:
        code = stack.proc.returncode
    for hier in Path("/sys/fs/cgroup").iterdir() if stack.own_cgroup_parent else ():
        try:  # the agent leaves the (empty) parent behind
            os.rmdir(hier / stack.own_cgroup_parent.lstrip("/"))
        except OSError:
            pass
    return code


def stop_agent_stack(stack: Stack, cgroup_parent: str) -> int:
    """stop_stack for a stack whose runtime-agent is a test's own: its containers and its
    cgroup parent go too."""
    ids = stack.cli("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
    if ids:
        stack.cli("rm", "-f", *ids, check=False)
    code = stop_stack(stack)
    for hier in Path("/sys/fs/cgroup").iterdir():
        try:
            os.rmdir(hier / cgroup_parent.lstrip("/"))
        except OSError:
            pass
    return code


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    """One whole stack (embedded NATS + every service) shared by the e2e tests."""
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


def skopeo(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
           check: bool = True) -> subprocess.CompletedProcess:
    """Real skopeo as a client; its blob-info cache lives in a private dir."""
    p = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p
