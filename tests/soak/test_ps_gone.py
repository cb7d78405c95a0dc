"""`ps -a` shows the containers of an agent that is gone (stopped cleanly or killed) as
`Unknown`, under the agent's name, from the `dockyard-containers` KV mirror; the agent back
shows them as they are, and `rm` takes a container out of the mirror."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.e2e.test_agent_fleet import running_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

GiB = 1 << 30


@pytest.fixture(scope="module")
def fleet(nats_url, tmp_path_factory):
    with running_fleet(tmp_path_factory.mktemp("ps-gone"), nats_url, {1: 2 * GiB, 2: 2 * GiB}) as f:
        yield f


def _rows(fleet, *args: str) -> dict[str, dict[str, str]]:
    """`ps ARGS` as {name: {column header: cell}}, cut at the header's column starts."""
    lines = fleet.cli("ps", *args).stdout.splitlines()
    heads = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES", "HOST"]
    starts = [lines[0].index(h) for h in heads] + [None]
    rows = [{h: ln[starts[i]:starts[i + 1]].strip() for i, h in enumerate(heads)} for ln in lines[1:]]
    return {r["NAMES"]: r for r in rows}


def _until(cond, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return got


def _if(value, cond):
    return value if cond(value) else None


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_containers_of_a_gone_agent_show_as_unknown(fleet, how):
    a, b = fleet.agents
    fleet.cli("run", "-d", "--name", "left", "--host", a.id, "--network", "none", "busybox", "sleep", "600")
    fleet.cli("run", "-d", "--name", "ended", "--host", a.id, "--network", "none", "busybox", "true")
    fleet.cli("run", "-d", "--name", "other", "--host", b.id, "--network", "none", "busybox", "sleep", "600")
    _until(lambda: json.loads(fleet.cli("inspect", "ended").stdout)[0]["State"]["Status"] == "exited")
    assert a.stop(how) in (0, -how)
    rows = _until(lambda: _if(_rows(fleet, "-a"), lambda r: {"left", "ended"} <= r.keys()))
    assert (rows["left"]["HOST"], rows["left"]["STATUS"]) == (a.id, "Unknown"), rows["left"]
    assert (rows["ended"]["HOST"], rows["ended"]["STATUS"]) == (a.id, "Unknown"), rows["ended"]
    assert rows["other"]["HOST"] == b.id and rows["other"]["STATUS"].startswith("Up"), rows["other"]
    assert "left" not in _rows(fleet)  # without -a: the live agents' running containers
    gone = {c["name"]: c for c in json.loads(fleet.cli("ps", "-a", "--json").stdout)}
    assert gone["left"]["state"]["status"] == "unknown" and gone["left"]["config"]["env"] == []
    a.start()
    rows = _until(lambda: _if(_rows(fleet, "-a"), lambda r: "left" in r and r["left"]["STATUS"].startswith("Up")))
    assert rows["ended"]["HOST"] == a.id and rows["ended"]["STATUS"].startswith("Exited (0)"), rows["ended"]
    fleet.cli("rm", "-f", "left", "ended", "other")
    assert _rows(fleet, "-a") == {}
    a.stop()
    assert _rows(fleet, "-a") == {}  # removed ones leave nothing in the mirror
    a.start()
