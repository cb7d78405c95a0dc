"""A real stack for end-to-end tests: `dockyard up` in a subprocess, CLI helpers, skopeo."""

from __future__ import annotations

import atexit
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
from shared.natsserver import free_port
from shared.permissions import Permissions

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    data_dir: Path
    nats_url: str
    registry_addr: str
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    @property
    def registry_url(self) -> str:
        return f"http://{self.registry_addr}"

    @property
    def admin_password(self) -> str:
        return (self.data_dir / "admin-password").read_text().strip()

    @property
    def admin_creds(self) -> str:
        return f"admin:{self.admin_password}"

    def cli(self, *args: str, input: str | None = None, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run `dockyard ARGS` against this stack, as a user would."""
        p = subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=self.env,
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


def start_stack(data_dir: Path, *, only: list[str] | None = None, timeout: float = 90) -> Stack:
    registry_addr = f"127.0.0.1:{free_port()}"
    _seed_authority(data_dir)
    env = {**os.environ, "DOCKYARD_DATA_DIR": str(data_dir), "DOCKYARD_REGISTRY_ADDR": registry_addr,
           "DOCKER_CONFIG": str(data_dir / "docker-config"), "PYTHONUNBUFFERED": "1"}
    env.pop("DOCKYARD_NATS_URL", None)
    env.pop("DOCKYARD_CREDS", None)
    args = [sys.executable, "-m", "services.cli.main", "up", "--nats-port", "0"]
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
    env["DOCKYARD_NATS_URL"] = info["nats_url"]
    return Stack(data_dir=data_dir, nats_url=info["nats_url"], registry_addr=registry_addr, proc=proc, env=env)


def stop_stack(stack: Stack) -> int:
    if stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGTERM)
        try:
            return stack.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            return stack.proc.wait()
    return stack.proc.returncode


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
