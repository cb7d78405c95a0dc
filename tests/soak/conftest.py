"""A whole `dockyard up` stack with busybox in its own registry, for the lifecycle and soak tests."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, Stack, skopeo, start_stack, stop_agent_stack
from tests.support.images import busybox_layout, skopeo_env

IMAGE = "soak/busybox:1"


@dataclass
class AgentStack:
    stack: Stack
    image: str

    def cli(self, *args: str, **kw):
        return self.stack.cli(*args, **kw)


def server_files(data_dir: Path, principal: str) -> tuple[Path, Path]:
    """(nats-server config, a credential of `principal` allowed everything) of a new
    authority in `data_dir`, as `dockyard up` makes them: for tests of the server alone."""
    from shared import credentials
    from shared.permissions import Permissions
    authority = credentials.Authority(credentials.credentials_dir(data_dir))
    conf = data_dir / "nats-server.conf"
    credentials.write_secret(conf, authority.server_config().encode())
    creds = data_dir / f"{principal}.creds"
    credentials.write_secret(creds, authority.issue(principal, Permissions((">",), (">",))).encode())
    return conf, creds


def push_busybox(stack: Stack, work: Path, image: str = IMAGE) -> str:
    busybox_layout(work / "layout", work / "work")
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", stack.admin_creds, f"oci:{work / 'layout'}:latest",
           f"docker://{stack.registry_addr}/{image}", env=skopeo_env(work / "home"))
    return image


def started_agent_stack(root: Path) -> AgentStack:
    # gctrace: nats-server logs its live heap at each GC (tests/soak/natscounts.live_heap_mb)
    s = start_stack(root / "stack", extra_env={"GODEBUG": "gctrace=1"})
    try:
        image = push_busybox(s, root)
        s.cli("run", "--rm", "-p", "127.0.0.1:0:80", image, "true")  # the image, bridge and ipam exist now
    except BaseException:
        stop_agent_stack(s, s.env["DOCKYARD_CGROUP_PARENT"])
        raise
    return AgentStack(s, image)


@pytest.fixture(scope="module")
def agent_stack(tmp_path_factory) -> AgentStack:
    """One stack per test module; its containers, cgroup parent and chains go with it."""
    a = started_agent_stack(tmp_path_factory.mktemp("soakstack"))
    yield a
    assert stop_agent_stack(a.stack, a.stack.env["DOCKYARD_CGROUP_PARENT"]) == 0, \
        (a.stack.data_dir / "up.log").read_text(errors="replace")


def restart_stack(stack: Stack, timeout: float = 90) -> Stack:
    """`dockyard up` again on a stopped stack's data dir, with its bridge, prefix and cgroup parent."""
    assert stack.proc.poll() is not None, "the stack still runs"
    stack_file = stack.data_dir / "stack.json"
    args = [sys.executable, "-m", "services.cli.main", "up", "--nats-port", "0", "--registry-addr", "127.0.0.1:0"]
    with open(stack.data_dir / "up.log", "ab") as out:
        proc = subprocess.Popen(args, env=stack.env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while not stack_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            raise RuntimeError(f"dockyard up failed:\n{(stack.data_dir / 'up.log').read_text(errors='replace')}")
        time.sleep(0.1)
    info = json.loads(stack_file.read_text())
    return dataclasses.replace(stack, nats_url=info["nats_url"], registry_addr=info["registry"], proc=proc)
