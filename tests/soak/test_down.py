"""`dockyard down`: stops the stack `up` started for a data dir, and with --containers its
containers first (a TERM-ignoring one is killed after -t); a restarted stack finds them exited."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.e2e.conftest import stop_agent_stack
from tests.soak import hostcounts
from tests.soak.conftest import restart_stack, started_agent_stack

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]


@pytest.fixture
def agent_stack(tmp_path):
    a = started_agent_stack(tmp_path)
    yield a
    if a.stack.proc.poll() is not None:  # the test brought it down: up again to remove what is left
        a.stack = restart_stack(a.stack)
    assert stop_agent_stack(a.stack, a.stack.env["DOCKYARD_CGROUP_PARENT"]) == 0


def test_down_with_containers_stops_them_then_the_stack(agent_stack):
    a = agent_stack
    s = a.stack
    info = json.loads((s.data_dir / "stack.json").read_text())
    assert info["agent_id"]
    web = a.cli("run", "-d", "--name", "web", "-p", "127.0.0.1:0:8080", a.image,
                "httpd", "-f", "-p", "8080").stdout.strip()
    stubborn = a.cli("run", "-d", "--name", "stubborn", a.image, "sleep", "600").stdout.strip()
    services = hostcounts.services(s)
    assert {x.name for x in services} >= {"nats-server", "runtime-agent", "registry-gateway"}
    t0 = time.monotonic()
    p = a.cli("down", "--containers", "-t", "1")
    assert time.monotonic() - t0 < 50
    assert sorted(p.stdout.split()[:2]) == ["stubborn", "web"], p.stdout
    assert s.proc.wait(30) == 0
    assert not (s.data_dir / "stack.json").exists()
    for x in services:
        assert not os.path.exists(f"/proc/{x.pid}") or _zombie(x.pid), x
    for cid in (web, stubborn):
        assert hostcounts.container_traces(s, cid) == [], cid
    again = a.cli("down", check=False)
    assert again.returncode == 1 and "no stack is running" in again.stderr
    a.stack = restart_stack(s)
    states = {c["Name"]: c["State"] for c in json.loads(a.cli("inspect", "web", "stubborn").stdout)}
    assert states["web"]["Status"] == "exited" and states["stubborn"]["ExitCode"] == 137, states
    a.cli("rm", "web", "stubborn")


def test_down_without_containers_leaves_them_running(agent_stack):
    a = agent_stack
    s = a.stack
    cid = a.cli("run", "-d", "--name", "survivor", "--network", "none", a.image, "sleep", "600").stdout.strip()
    a.cli("down")
    assert s.proc.wait(30) == 0
    assert any(t.startswith("cgroup") for t in hostcounts.container_traces(s, cid))  # still running
    a.stack = restart_stack(s)
    assert json.loads(a.cli("inspect", "survivor").stdout)[0]["State"]["Running"]
    a.cli("rm", "-f", "survivor")


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
