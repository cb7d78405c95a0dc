"""wait, restart, rename, port, pause/unpause, update (issue 11) on real agents and crun, on two agents."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.test_agent_fleet import CGROUP_PARENT, running_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

GiB = 1 << 30
MiB = 1 << 20
CG = Path("/sys/fs/cgroup")


@pytest.fixture(scope="module")
def fleet(nats_url, tmp_path_factory):
    with running_fleet(tmp_path_factory.mktemp("verbs"), nats_url, {1: 2 * GiB, 2: 4 * GiB}) as f:
        yield f


def _cg(controller: str, cid: str, name: str) -> str:
    return (CG / controller / CGROUP_PARENT.lstrip("/") / cid / name).read_text().strip()


def _wait_for(pred, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return v


@pytest.mark.parametrize("where", ["placed", "other"])
def test_wait_prints_the_exit_code(fleet, where):
    host = ["--host", fleet.agents[0].id] if where == "other" else []
    name = f"waited-{where}"
    fleet.cli("run", "-d", "--name", name, *host, "--network", "none", "busybox", "sh", "-c", "sleep 1; exit 3")
    p = fleet.cli("wait", name)
    assert p.stdout.strip() == "3"
    assert fleet.inspect(name)["State"]["Status"] == "exited"
    assert fleet.cli("wait", name).stdout.strip() == "3"  # an exited container answers at once
    p = fleet.cli("wait", "no-such-container", check=False)
    assert p.returncode == 1 and "no such container" in p.stderr
    fleet.cli("rm", name)


def test_restart_runs_a_new_process_and_rename_keeps_it(fleet):
    other = fleet.agents[0].id
    fleet.cli("run", "-d", "--name", "again", "--host", other, "--network", "none", "busybox", "sleep", "600")
    before = fleet.inspect("again")["State"]
    assert fleet.cli("restart", "-t", "1", "again").stdout.strip() == "again"
    after = fleet.inspect("again")["State"]
    assert after["Status"] == "running" and after["Pid"] != before["Pid"] and os.path.exists(f"/proc/{after['Pid']}")
    assert not os.path.exists(f"/proc/{before['Pid']}")
    assert after["StartedAt"] > before["StartedAt"]

    fleet.cli("rename", "again", "renamed")
    info = fleet.inspect("renamed")
    assert (info["Name"], info["State"]["Pid"], info["Host"]) == ("renamed", after["Pid"], other)
    assert fleet.cli("inspect", "again", check=False).returncode != 0
    # names are an agent's own, as they are a docker host's
    fleet.cli("run", "-d", "--name", "taken", "--host", other, "--network", "none", "busybox", "sleep", "600")
    p = fleet.cli("rename", "renamed", "taken", check=False)
    assert p.returncode != 0 and "already in use" in p.stderr
    p = fleet.cli("rename", "renamed", "bad/name", check=False)
    assert p.returncode != 0 and "invalid container name" in p.stderr
    fleet.cli("rm", "-f", "renamed", "taken")


def test_port_lists_what_is_published(fleet):
    cid = fleet.cli("run", "-d", "--name", "ported", "-p", "127.0.0.1:0:8080", "-p", "127.0.0.1:0:9090/udp",
                    "busybox", "sleep", "600").stdout.strip()
    ports = {(p["container_port"], p["protocol"]): p["host_port"]
             for p in fleet.inspect(cid)["NetworkSettings"]["Ports"]}
    tcp, udp = ports[(8080, "tcp")], ports[(9090, "udp")]
    assert tcp > 0 and udp > 0
    assert fleet.cli("port", "ported").stdout.splitlines() == [f"8080/tcp -> 127.0.0.1:{tcp}",
                                                              f"9090/udp -> 127.0.0.1:{udp}"]
    assert fleet.cli("port", "ported", "8080").stdout.strip() == f"127.0.0.1:{tcp}"
    assert fleet.cli("port", "ported", "9090/udp").stdout.strip() == f"127.0.0.1:{udp}"
    p = fleet.cli("port", "ported", "81", check=False)
    assert p.returncode == 1 and "no public port '81/tcp'" in p.stderr
    fleet.cli("rm", "-f", "ported")


def _cpu_ns(cid: str) -> int:
    return int(_cg("cpuacct", cid, "cpuacct.usage"))


@pytest.mark.parametrize("where", ["placed", "other"])
def test_pause_stops_cpu_time_and_unpause_resumes_it(fleet, where):
    host = ["--host", fleet.agents[0].id] if where == "other" else []
    name = f"spinner-{where}"
    cid = fleet.cli("run", "-d", "--name", name, *host, "--network", "none", "busybox",
                    "sh", "-c", "while :; do :; done").stdout.strip()
    first = _cpu_ns(cid)
    _wait_for(lambda: _cpu_ns(cid) > first, what="the spinner to use CPU")
    fleet.cli("pause", name)
    assert _cg("freezer", cid, "freezer.state") == "FROZEN"
    info = fleet.inspect(name)["State"]
    assert (info["Status"], info["Paused"], info["Running"]) == ("paused", True, True)
    assert "(Paused)" in fleet.cli("ps", "--filter", f"name={name}").stdout
    assert fleet.cli("ps", "-q", "--no-trunc", "--filter", "status=paused").stdout.split() == [cid]
    frozen = _cpu_ns(cid)
    time.sleep(0.5)
    assert _cpu_ns(cid) == frozen  # not one nanosecond more while frozen
    p = fleet.cli("pause", name, check=False)
    assert p.returncode == 1 and "already paused" in p.stderr

    fleet.cli("unpause", name)
    assert _cg("freezer", cid, "freezer.state") == "THAWED"
    _wait_for(lambda: _cpu_ns(cid) > frozen, what="CPU time after unpause")
    assert fleet.inspect(name)["State"]["Status"] == "running"

    fleet.cli("pause", name)  # a paused container still stops (it is thawed to die)
    fleet.cli("stop", "-t", "1", name)
    st = fleet.inspect(name)["State"]
    assert (st["Status"], st["Paused"]) == ("exited", False)
    fleet.cli("rm", name)


def test_update_changes_a_running_container_and_start_reapplies_it(fleet):
    other = fleet.agents[0].id
    cid = fleet.cli("run", "-d", "--name", "updated", "--host", other, "--network", "none", "-m", "64m",
                    "busybox", "sleep", "600").stdout.strip()
    assert int(_cg("memory", cid, "memory.limit_in_bytes")) == 64 * MiB
    fleet.cli("update", "-m", "128m", "--memory-swap", "256m", "--cpus", "0.5", "--pids-limit", "50",
              "--cpu-shares", "512", "--restart", "on-failure:3", "updated")
    assert int(_cg("memory", cid, "memory.limit_in_bytes")) == 128 * MiB
    assert int(_cg("memory", cid, "memory.memsw.limit_in_bytes")) == 256 * MiB
    assert int(_cg("cpu", cid, "cpu.cfs_quota_us")) == 50000
    assert int(_cg("cpu", cid, "cpu.shares")) == 512
    assert _cg("pids", cid, "pids.max") == "50"
    hc = fleet.inspect("updated")["HostConfig"]
    assert (hc["Memory"], hc["MemorySwap"], hc["NanoCpus"], hc["PidsLimit"], hc["CpuShares"]) == (
        128 * MiB, 256 * MiB, 500_000_000, 50, 512)
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}

    fleet.cli("update", "-m", "32m", "updated")  # smaller: the memory goes first, memory+swap stays
    assert int(_cg("memory", cid, "memory.limit_in_bytes")) == 32 * MiB
    p = fleet.cli("update", "-m", "1g", "updated", check=False)  # over memory+swap: refused, nothing changed
    assert p.returncode == 1 and "memoryswap" in p.stderr
    assert int(_cg("memory", cid, "memory.limit_in_bytes")) == 32 * MiB
    p = fleet.cli("update", "--pids-limit", "40", "--restart", "sometimes", "updated", check=False)
    assert p.returncode == 1 and "invalid restart policy" in p.stderr
    assert _cg("pids", cid, "pids.max") == "50"

    fleet.cli("stop", "-t", "0", "updated")
    fleet.cli("start", "updated")  # a new cgroup, built from the record's limits
    assert int(_cg("memory", cid, "memory.limit_in_bytes")) == 32 * MiB
    assert int(_cg("cpu", cid, "cpu.cfs_quota_us")) == 50000
    assert _cg("pids", cid, "pids.max") == "50"
    fleet.cli("rm", "-f", "updated")

