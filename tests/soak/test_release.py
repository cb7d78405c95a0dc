"""An exited container holds nothing on the host (docker's rule): its overlay is unmounted, its
cgroup, netns, veth and published-port rules are gone, whether it was stopped, killed, ended
on its own or was OOM-killed; `start` mounts and wires it again, and its published port answers."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest

from tests.soak import hostcounts

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]


def _inspect(a, ref: str) -> dict:
    return json.loads(a.cli("inspect", ref).stdout)[0]


def _wait_exited(a, ref: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while (st := _inspect(a, ref)["State"])["Status"] != "exited":
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    return st


def _until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _get(port: int, path: str = "/passwd", timeout: float = 15.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _httpd(a, *extra: str) -> str:
    return a.cli("run", "-d", "-p", "127.0.0.1:0:8080", *extra, a.image,
                 "httpd", "-f", "-p", "8080", "-h", "/etc").stdout.strip()


def test_a_stopped_container_is_released_and_start_takes_it_all_again(agent_stack):
    a = agent_stack
    before = hostcounts.host(a.stack)
    keys = hostcounts.kv_containers(a.stack)["kv_keys"]
    cid = _httpd(a)
    assert hostcounts.container_traces(a.stack, cid)  # running: it holds all of them
    # mirrored by the agent under its own credential (the `ps` of a gone agent)
    _until(lambda: hostcounts.kv_containers(a.stack)["kv_keys"] == keys + 1)
    port = _inspect(a, cid)["NetworkSettings"]["Ports"][0]["host_port"]
    assert _get(port).startswith(b"root:")
    a.cli("stop", "-t", "1", cid)
    assert hostcounts.container_traces(a.stack, cid) == []
    released = hostcounts.host(a.stack)
    assert {k: released[k] for k in released if k != "agent_files"} == \
        {k: before[k] for k in before if k != "agent_files"}
    a.cli("start", cid)
    info = _inspect(a, cid)
    assert info["State"]["Running"]
    port = info["NetworkSettings"]["Ports"][0]["host_port"]
    assert _get(port).startswith(b"root:")
    traces = hostcounts.container_traces(a.stack, cid)
    assert any(t.startswith("mount") for t in traces) and any(t.startswith("cgroup") for t in traces)
    a.cli("rm", "-f", cid)
    assert hostcounts.host(a.stack) == before
    _until(lambda: hostcounts.kv_containers(a.stack)["kv_keys"] == keys)


def test_kill_own_exit_and_oom_release_too(agent_stack):
    a = agent_stack
    before = hostcounts.host(a.stack)
    killed = _httpd(a)
    a.cli("kill", killed)
    ended = a.cli("run", "-d", "-p", "127.0.0.1:0:8080", a.image, "sh", "-c", "sleep 0.2; exit 3").stdout.strip()
    oom = a.cli("run", "-d", "--memory", "8m", "--memory-swap", "8m", a.image,
                "dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", "count=64").stdout.strip()
    assert _wait_exited(a, killed)["ExitCode"] == 137
    assert _wait_exited(a, ended)["ExitCode"] == 3
    st = _wait_exited(a, oom)
    assert st["OOMKilled"] is True and st["ExitCode"] == 137, st
    for cid in (killed, ended, oom):
        assert hostcounts.container_traces(a.stack, cid) == [], cid
    a.cli("rm", killed, ended, oom)
    assert hostcounts.host(a.stack) == before


def test_a_start_that_fails_holds_nothing(agent_stack):
    a = agent_stack
    before = hostcounts.host(a.stack)
    p = a.cli("run", "-d", "--name", "nocmd", "-p", "127.0.0.1:0:8080", a.image, "/no/such/command", check=False)
    assert p.returncode != 0
    st = _inspect(a, "nocmd")["State"]
    assert st["Status"] == "created" and st["Error"], st
    assert hostcounts.container_traces(a.stack, _inspect(a, "nocmd")["Id"]) == []
    a.cli("rm", "nocmd")
    assert hostcounts.host(a.stack) == before

