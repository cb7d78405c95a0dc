"""top, stats and events (issue 11) on real agents and crun, on two agents."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.e2e.test_agent_fleet import REPO_ROOT, running_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

GiB = 1 << 30
MiB = 1 << 20
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "kB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3}


@pytest.fixture(scope="module")
def fleet(nats_url, tmp_path_factory):
    with running_fleet(tmp_path_factory.mktemp("observe"), nats_url, {1: 2 * GiB, 2: 4 * GiB}) as f:
        yield f


def _bytes(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)([A-Za-z]+)", text.strip())
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def _stats(fleet, name: str) -> dict:
    out = fleet.cli("stats", "--no-stream", "--format", "json", name).stdout.splitlines()
    assert len(out) == 1, out
    return json.loads(out[0])


def test_top_lists_the_container_processes(fleet):
    other = fleet.agents[0].id
    fleet.cli("run", "-d", "--name", "topped", "--host", other, "--network", "none", "busybox",
              "sh", "-c", "sleep 600 & sleep 700; echo")
    pid = fleet.inspect("topped")["State"]["Pid"]
    lines = fleet.cli("top", "topped").stdout.splitlines()
    titles = lines[0].split()
    assert titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    rows = [ln.split(None, len(titles) - 1) for ln in lines[1:]]
    cmds = sorted(r[-1] for r in rows)
    assert cmds == ["sh -c sleep 600 & sleep 700; echo", "sleep 600", "sleep 700"], lines
    assert str(pid) in [r[1] for r in rows]  # host pids, as docker shows them
    out = fleet.cli("top", "topped", "-o", "pid,comm").stdout.splitlines()
    assert out[0].split() == ["PID", "COMMAND"]
    assert sorted(ln.split()[1] for ln in out[1:]) == ["sh", "sleep", "sleep"]
    p = fleet.cli("top", "topped", "-o", "comm", check=False)
    assert p.returncode != 0 and "PID field" in p.stderr
    fleet.cli("rm", "-f", "topped")


@pytest.mark.parametrize("where", ["placed", "other"])
def test_stats_memory_rises_when_the_container_allocates(fleet, where, tmp_path):
    host = ["--host", fleet.agents[0].id] if where == "other" else []
    name = f"grower-{where}"
    # It allocates 64 MiB of tmpfs (charged to its cgroup) only once a trigger file is copied in,
    # after the first sample: a sample can never race the allocation.
    fleet.cli("run", "-d", "--name", name, *host, "--network", "none", "-m", "256m", "--tmpfs", "/big:size=100m",
              "busybox", "sh", "-c",
              "while [ ! -e /trigger/go ]; do sleep 0.05; done; dd if=/dev/zero of=/big/f bs=1M count=64; "
              "sleep 600")
    first = _stats(fleet, name)
    used, limit = (_bytes(x) for x in first["MemUsage"].split(" / "))
    assert limit == 256 * MiB and used < 32 * MiB, first
    assert first["Name"] == name and int(first["PIDs"]) >= 1
    assert first["NetIO"] == "0B / 0B" and re.fullmatch(r"\d+\.\d\d%", first["CPUPerc"])
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    (trigger / "go").write_text("go")
    fleet.cli("cp", str(trigger), f"{name}:/")
    deadline = time.monotonic() + 30
    while True:
        now = _stats(fleet, name)
        grown = _bytes(now["MemUsage"].split(" / ")[0])
        if grown >= used + 60 * MiB:
            break
        assert time.monotonic() < deadline, (first, now)
        time.sleep(0.2)
    assert float(now["MemPerc"].rstrip("%")) > 20.0
    fleet.cli("rm", "-f", name)


def test_stats_table_cpu_and_net_of_a_bridged_container(fleet):
    fleet.cli("run", "-d", "--name", "busy", "busybox", "sh", "-c", "while :; do :; done")
    ip = fleet.inspect("busy")["NetworkSettings"]["IPAddress"]
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # 100 datagrams into its namespace
        for _ in range(100):
            s.sendto(b"x" * 1000, (ip, 9))
    lines = fleet.cli("stats", "--no-stream", "busy").stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %",
                                              "NET I/O", "BLOCK I/O", "PIDS"]
    row = json.loads(fleet.cli("stats", "--no-stream", "--format", "{{json .}}", "busy").stdout)
    assert float(row["CPUPerc"].rstrip("%")) > 0.0  # a spinning shell gets some CPU between two samples
    rx = _bytes(row["NetIO"].split(" / ")[0])
    assert rx >= 100 * 1000, row
    every = fleet.cli("stats", "--no-stream", "--format", "{{.Name}}").stdout.split()
    assert "busy" in every  # no name: every running container of the fleet
    fleet.cli("rm", "-f", "busy")


def test_stats_of_named_containers_on_both_agents_in_one_call(fleet):
    for name, agent in (("left", fleet.agents[0]), ("right", fleet.agents[1])):
        fleet.cli("run", "-d", "--name", name, "--host", agent.id, "--network", "none", "busybox", "sleep", "600")
    right = fleet.inspect("right")["Id"]
    out = fleet.cli("stats", "--no-stream", "--format", "json", "left", right[:10]).stdout.splitlines()
    rows = [json.loads(ln) for ln in out]
    assert [(r["Container"], r["Name"], r["ID"]) for r in rows] == [("left", "left", fleet.inspect("left")["Id"][:12]),
                                                                   (right[:10], "right", right[:12])]
    assert all(int(r["PIDs"]) >= 1 and _bytes(r["MemUsage"].split(" / ")[0]) > 0 for r in rows), rows
    p = fleet.cli("stats", "--no-stream", "left", "nothing-here", check=False)
    assert p.returncode == 1 and "no such container: nothing-here" in p.stderr, p.stderr
    fleet.cli("stop", "-t", "0", "left")
    assert _stats(fleet, "left")["PIDs"] == "0"  # named, a stopped container is a row of zeros
    listed = fleet.cli("stats", "--no-stream", "--format", "{{.Name}}").stdout.split()
    assert "right" in listed and "left" not in listed  # the running ones, as docker
    assert "left" in fleet.cli("stats", "--no-stream", "-a", "--format", "{{.Name}}").stdout.split()
    fleet.cli("rm", "-f", "left", "right")


class EventsProc:
    def __init__(self, fleet, *args: str, verb: str = "events"):
        self.p = subprocess.Popen([sys.executable, "-m", "services.cli.main", verb, *args], env=fleet.env,
                                  cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def until(self, pred, timeout: float = 30.0) -> list[str]:
        import selectors
        buf = b""
        sel = selectors.DefaultSelector()
        sel.register(self.p.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while not pred(lines := buf.decode().split("\n")[:-1]):  # whole lines only
            left = deadline - time.monotonic()
            assert left > 0 and sel.select(left), (lines, self.p.poll())
            chunk = os.read(self.p.stdout.fileno(), 65536)  # raw: no buffer hides a line from select
            assert chunk, (lines, self.p.stderr.read() if self.p.poll() is not None else "")
            buf += chunk
        return lines

    def close(self) -> None:
        self.p.kill()
        self.p.wait(10)


def test_stats_stream_goes_on_when_a_named_container_goes(fleet):
    fleet.cli("run", "-d", "--name", "brief", "--network", "none", "busybox", "sleep", "600")
    stream = EventsProc(fleet, "--format", "table {{.Name}}", "brief", verb="stats")
    try:
        assert stream.until(lambda lines: lines[:2] == ["NAME", "brief"])[:2] == ["NAME", "brief"]
        fleet.cli("rm", "-f", "brief")
        # later rounds: the header alone, and the command still streaming (docker drops the row)
        stream.until(lambda lines: lines[-2:] == ["NAME", "NAME"])
        assert stream.p.poll() is None
    finally:
        stream.close()


def test_events_live_and_kept_with_filters(fleet):
    other = fleet.agents[0].id
    t0 = time.time()
    ev = EventsProc(fleet, "--since", f"{t0:.3f}", "--filter", "type=container", "--filter", "event=die",
                    "--format", "json")
    try:
        fleet.cli("run", "--rm", "--name", "ev-here", "--network", "none", "busybox", "sh", "-c", "exit 4", check=False)
        fleet.cli("run", "--rm", "--name", "ev-there", "--host", other, "--network", "none", "busybox", "true")
        lines = ev.until(lambda ls: len(ls) >= 2)
    finally:
        ev.close()
    got = [json.loads(ln) for ln in lines]
    assert [(g["Action"], g["Actor"]["Attributes"]["name"]) for g in got] == [("die", "ev-here"), ("die", "ev-there")]
    here = got[0]
    assert (here["status"], here["Type"], here["from"], here["scope"]) == ("die", "container", "busybox", "local")
    assert here["Actor"]["Attributes"]["exitCode"] == "4" and here["id"] == here["Actor"]["ID"]
    assert here["time"] == here["timeNano"] // 10 ** 9 and here["time"] >= int(t0)

    t1 = time.time() + 0.5
    time.sleep(0.6)
    # kept: the whole life of each, from both agents, in docker's text form, and nothing after --until
    p = fleet.cli("events", "--since", f"{t0:.3f}", "--until", f"{t1:.3f}", "--filter", "container=ev-here")
    actions = [ln.split()[2] for ln in p.stdout.splitlines()]
    assert actions == ["create", "start", "die", "destroy"], p.stdout
    first = p.stdout.splitlines()[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z container create [0-9a-f]{64} "
                        r"\(image=busybox, name=ev-here\)", first), first
    p = fleet.cli("events", "--since", f"{t0:.3f}", "--until", f"{t1:.3f}", "--filter", f"host={other}",
                  "--format", "{{.Action}} {{.Actor.ID}}")
    assert [ln.split()[0] for ln in p.stdout.splitlines()] == ["create", "start", "die", "destroy"]
    p = fleet.cli("events", "--filter", "colour=red", check=False)
    assert p.returncode != 0 and "invalid filter" in p.stderr
