"""runtime-agent end to end: real agents (processes), a real registry, the real runtime, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_agent_fleet import Fleet, leftovers, running_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

GiB = 1 << 30


@pytest.fixture(scope="module")
def fleet(nats_url, tmp_path_factory):
    # Agent 2 is the roomier one: placement picks it.
    with running_fleet(tmp_path_factory.mktemp("agent-fleet"), nats_url, {1: 2 * GiB, 2: 4 * GiB}) as f:
        yield f
    for a in f.agents:  # an idle agent removes its bridge and chains when it stops
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert f" {a.bridge}:" not in links, f"bridge {a.bridge} left behind"


def test_run_rm_streams_output_and_returns_the_exit_code(fleet):
    p = fleet.cli("run", "--rm", "busybox", "sh", "-c", "echo hello; echo oops >&2; exit 3", check=False)
    assert (p.returncode, p.stdout) == (3, "hello\n"), p.stderr
    assert "oops" in p.stderr
    assert fleet.cli("ps", "-a", "-q").stdout == ""  # --rm removed it


def test_image_config_and_flags_with_docker_semantics(fleet, tmp_path):
    (tmp_path / "f").write_text("from the host\n")
    tmp_path.chmod(0o755)  # readable by `nobody` inside
    p = fleet.cli("run", "--rm", "--network", "none", "-e", "FOO=bar", "-w", "/tmp", "-u", "nobody",
                  "-v", f"{tmp_path}:/data:ro", "--entrypoint", "/bin/sh", "busybox",
                  "-c", "echo $FOO; pwd; id -u; id -g; cat /data/f; touch /data/x 2>/dev/null || echo ro")
    assert p.stdout.splitlines() == ["bar", "/tmp", "65534", "65534", "from the host", "ro"]


def test_detached_httpd_published_limited_then_stopped_and_removed(fleet):
    # host port 0: the agent picks a free one, read back from inspect
    cid = fleet.cli("run", "-d", "--name", "web", "--publish", "127.0.0.1:0:8080", "--memory", "64m",
                    "--memory-swap", "128m", "--cpu-shares", "512", "busybox",
                    "httpd", "-f", "-p", "8080", "-h", "/etc").stdout.strip()
    assert len(cid) == 64
    info = fleet.inspect("web")
    agent = next(a for a in fleet.agents if a.id == info["Host"])
    assert agent.index == 2  # the agent with the most free memory
    port = info["NetworkSettings"]["Ports"][0]["host_port"]
    assert port != 0
    body = _get(f"http://127.0.0.1:{port}/passwd")
    assert body.startswith(b"root:x:0:0")
    memcg = Path("/sys/fs/cgroup/memory/dyag-test") / cid
    assert int((memcg / "memory.limit_in_bytes").read_text()) == 64 << 20
    assert int((memcg / "memory.memsw.limit_in_bytes").read_text()) == 128 << 20
    assert int(Path(f"/sys/fs/cgroup/cpu/dyag-test/{cid}/cpu.shares").read_text()) == 512
    assert info["State"]["Running"] and info["HostConfig"]["Memory"] == 64 << 20
    assert info["NetworkSettings"]["IPAddress"].startswith(f"10.231.{(os.getpid() % 120) * 2 + 2}.")
    rows = fleet.cli("ps").stdout.splitlines()
    assert rows[0].split()[:3] == ["CONTAINER", "ID", "IMAGE"]
    assert any(cid[:12] in r and f"127.0.0.1:{port}->8080/tcp" in r and "web" in r and agent.id in r
               for r in rows[1:])
    fleet.cli("stop", "-t", "1", "web")
    assert fleet.inspect("web")["State"]["Status"] == "exited"
    fleet.cli("rm", "web")
    assert leftovers(cid, agent) == []
    assert fleet.cli("inspect", "web", check=False).returncode == 1


def test_logs_of_a_container(fleet):
    fleet.cli("run", "-d", "--name", "talker", "--network", "none", "busybox",
              "sh", "-c", "for i in 1 2 3; do echo line $i; done; echo warn >&2; sleep 30")
    deadline = time.monotonic() + 5
    while (out := fleet.cli("logs", "talker")).stdout.count("line") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert out.stdout == "line 1\nline 2\nline 3\n" and out.stderr == "warn\n"
    assert fleet.cli("logs", "--tail", "1", "talker").stdout == ""
    follow = subprocess.Popen([*_cli(fleet), "logs", "-f", "talker"], env=fleet.env, stdout=subprocess.PIPE,
                              text=True)
    time.sleep(0.5)
    fleet.cli("kill", "talker")
    assert follow.wait(10) == 0  # -f ends when the container does
    assert follow.stdout.read() == "line 1\nline 2\nline 3\n"
    fleet.cli("rm", "talker")


def test_memory_over_the_limit_is_oom_killed(fleet):
    # tmpfs pages count against the memory cgroup and, without swap, cannot be reclaimed
    fleet.cli("run", "-d", "--name", "hog", "--network", "none", "--memory", "16m", "--memory-swap", "16m",
              "busybox", "dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", "count=48")
    state = _wait_exited(fleet, "hog")
    assert state["OOMKilled"] is True and state["ExitCode"] == 137, state
    fleet.cli("rm", "hog")


def test_stop_kills_a_pid1_that_ignores_term_after_the_timeout(fleet):
    fleet.cli("run", "-d", "--name", "stubborn", "--network", "none", "busybox", "sleep", "600")
    t0 = time.monotonic()
    fleet.cli("stop", "-t", "1", "stubborn")
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 4, elapsed
    assert fleet.inspect("stubborn")["State"]["ExitCode"] == 137
    fleet.cli("start", "stubborn")
    assert fleet.inspect("stubborn")["State"]["Running"]
    fleet.cli("rm", "-f", "stubborn")


def test_foreground_run_forwards_sigint_and_keeps_the_trap_exit_code(fleet):
    run = subprocess.Popen([*_cli(fleet), "run", "--rm", "--network", "none", "busybox", "sh", "-c",
                            'trap "exit 7" INT; echo ready; while :; do sleep 0.1; done'],
                           env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline() == "ready\n", run.stderr.read() if run.poll() is not None else ""
        run.send_signal(signal.SIGINT)
        assert run.wait(10) == 7, run.stderr.read()  # the container's handler, not the CLI, decided
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert fleet.cli("ps", "-a", "-q").stdout == ""  # --rm removed it


def test_foreground_run_forwards_sigterm(fleet):
    run = subprocess.Popen([*_cli(fleet), "run", "--rm", "--network", "none", "busybox", "sh", "-c",
                            'trap "exit 9" TERM; echo ready; while :; do sleep 0.1; done'],
                           env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline() == "ready\n"
        run.send_signal(signal.SIGTERM)
        assert run.wait(10) == 9, run.stderr.read()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert fleet.cli("ps", "-a", "-q").stdout == ""


def test_etc_hosts_hostname_and_resolv_conf_of_a_bridged_container(fleet):
    script = ("hostname; cat /etc/hostname; echo --; cat /etc/hosts; echo --; cat /etc/resolv.conf; echo --; "
              "(echo x > /etc/hosts) 2>/dev/null || echo read-only; sleep 600")
    cid = fleet.cli("run", "-d", "--name", "dyap-etc", "--hostname", "dyap-web", "busybox",
                    "sh", "-c", script).stdout.strip()
    info = fleet.inspect(cid)
    agent = next(a for a in fleet.agents if a.id == info["Host"])
    ip = info["NetworkSettings"]["IPAddress"]
    assert ip and info["Config"]["Hostname"] == "dyap-web"
    deadline = time.monotonic() + 5
    while "read-only" not in (out := fleet.cli("logs", cid).stdout) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert out.count("--\n") == 3, out
    name, hosts, resolv, tail = out.split("--\n")
    assert name == "dyap-web\ndyap-web\n", out
    assert "127.0.0.1\tlocalhost" in hosts.splitlines() and f"{ip}\tdyap-web" in hosts.splitlines(), hosts
    host_servers = [ln.split()[1] for ln in Path("/etc/resolv.conf").read_text().splitlines()
                    if ln.startswith("nameserver")]
    servers = [ln.split()[1] for ln in resolv.splitlines() if ln.startswith("nameserver")]
    assert servers and not any(s.startswith("127.") or s == "::1" for s in servers), resolv
    assert set(servers) <= set(host_servers) | {"8.8.8.8", "8.8.4.4"}
    assert tail == "read-only\n"
    etc = [d for d in (fleet.root / "data").rglob(f"{cid}/etc")]
    assert len(etc) == 1 and f"{ip}\tdyap-web\n" in (etc[0] / "hosts").read_text()
    fleet.cli("rm", "-f", cid)
    assert not etc[0].exists() and leftovers(cid, agent) == []


def test_default_hostname_is_the_short_id_and_network_none_has_no_nameserver(fleet):
    p = fleet.cli("run", "--rm", "--network", "none", "busybox", "sh", "-c",
                  "hostname; cat /etc/hosts; echo --; cat /etc/resolv.conf")
    name, rest = p.stdout.split("\n", 1)
    hosts, resolv = rest.split("--\n")
    assert len(name) == 12 and all(c in "0123456789abcdef" for c in name), p.stdout
    assert hosts.startswith("127.0.0.1\tlocalhost\n") and name not in hosts  # no address to name
    assert "nameserver" not in resolv


def test_heartbeats_follow_container_starts_and_exits(fleet):
    import json

    def running() -> dict[str, int]:
        return {b["agent_id"]: b["running"] for b in json.loads(fleet.cli("--json", "agents").stdout)}

    before = running()
    fleet.cli("run", "-d", "--name", "beat", "--network", "none", "busybox", "sleep", "600")
    host = fleet.inspect("beat")["Host"]
    # Well inside the 2 s heartbeat interval: the start itself refreshed the fleet's view.
    time.sleep(0.3)
    assert running()[host] == before[host] + 1
    fleet.cli("rm", "-f", "beat")
    time.sleep(0.3)
    assert running()[host] == before[host]


def test_restart_policy_on_failure(fleet):
    fleet.cli("run", "-d", "--name", "flaky", "--network", "none", "--restart", "on-failure:2", "busybox",
              "sh", "-c", "exit 1")
    deadline = time.monotonic() + 10
    while (st := fleet.inspect("flaky")["State"])["RestartCount"] < 2 or st["Running"]:
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    time.sleep(0.5)
    st = fleet.inspect("flaky")["State"]
    assert (st["RestartCount"], st["Status"], st["ExitCode"]) == (2, "exited", 1)
    fleet.cli("rm", "flaky")


def test_two_agents_host_flag_and_a_killed_agent_comes_back(fleet):
    small, big = fleet.agents
    assert {small.id, big.id} <= fleet.agent_ids()
    fleet.cli("run", "-d", "--name", "on-small", "--host", small.id, "-p", "127.0.0.1:0:8080",
              "busybox", "httpd", "-f", "-p", "8080", "-h", "/etc")
    fleet.cli("run", "-d", "--name", "on-big", "--network", "none", "busybox", "sleep", "600")
    hosts = {ln.split()[-1] for ln in fleet.cli("ps").stdout.splitlines()[1:]}
    assert hosts == {small.id, big.id}
    # an image too big for any agent is refused before anything runs
    p = fleet.cli("run", "-d", "--memory", "8g", "busybox", "true", check=False)
    assert p.returncode == 125 and f"no host has 8192 MiB free (largest: 4096 MiB on {big.id})" in p.stderr

    info = fleet.inspect("on-small")
    port = info["NetworkSettings"]["Ports"][0]["host_port"]
    assert _get(f"http://127.0.0.1:{port}/passwd").startswith(b"root:")
    small.stop(signal.SIGKILL)
    t0 = time.monotonic()
    while small.id in fleet.agent_ids():
        assert time.monotonic() - t0 < 10, "a dead agent stayed in the fleet"
        time.sleep(0.25)
    assert _get(f"http://127.0.0.1:{port}/passwd").startswith(b"root:")  # its container runs on without it
    assert os.path.exists(f"/proc/{info['State']['Pid']}")

    small.start()
    rows = [ln for ln in fleet.cli("ps").stdout.splitlines() if "on-small" in ln]
    assert rows and "Up" in rows[0] and small.id in rows[0]
    fleet.cli("stop", "-t", "1", "on-small")
    assert fleet.inspect("on-small")["State"]["Status"] == "exited"
    cid = info["Id"]
    fleet.cli("rm", "on-small")
    fleet.cli("rm", "-f", "on-big")
    assert leftovers(cid, small) == []


def test_an_agent_restart_reports_containers_that_exited_meanwhile(fleet):
    agent = fleet.agents[0]
    fleet.cli("run", "-d", "--name", "brief", "--host", agent.id, "--network", "none", "busybox",
              "sh", "-c", "sleep 1; exit 7")
    agent.stop(signal.SIGKILL)
    time.sleep(1.5)
    agent.start()
    st = fleet.inspect("brief")["State"]
    assert (st["Status"], st["ExitCode"]) == ("exited", 7)
    fleet.cli("rm", "brief")


# ---- helpers ------------------------------------------------------------------------------

def _cli(fleet: Fleet) -> list[str]:
    import sys
    return [sys.executable, "-m", "services.cli.main"]


def _get(url: str, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _wait_exited(fleet: Fleet, ref: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while (st := fleet.inspect(ref)["State"])["Running"]:
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    return st


async def test_prune_removes_old_exited_containers_then_unused_images(fleet):
    from shared import bus, subjects
    from shared.messages.agent import VERB_IMAGES, ImagesReply, ImagesRequest
    from shared.messages.gc import AGENT_PRUNE_VERB, PruneReply, PruneRequest
    agent = fleet.agents[0]
    fleet.cli("run", "-d", "--name", "done", "--host", agent.id, "--network", "none", "busybox", "true")
    fleet.cli("run", "-d", "--name", "busy", "--host", agent.id, "--network", "none", "busybox", "sleep", "600")
    _wait_exited(fleet, "done")
    nc = await bus.connect(fleet.env["DOCKYARD_NATS_URL"])
    client = bus.BusClient(nc)
    try:
        subject = subjects.agent(agent.id, AGENT_PRUNE_VERB)
        dry = await client.request(subject, PruneRequest(exited_before_seconds=0, dry_run=True), PruneReply)
        assert [i.split()[1] for i in dry.items] == ["done"]  # the image is in use by `busy`
        assert fleet.inspect("done")["State"]["Status"] == "exited"  # a dry run removes nothing
        fleet.cli("rm", "-f", "busy")
        kept = await client.request(subject, PruneRequest(exited_before_seconds=0, exclude=["busybox:*"]),
                                    PruneReply)
        assert kept.items == ["container done " + kept.items[0].split()[-1]]
        images = await client.request(subjects.agent(agent.id, VERB_IMAGES), ImagesRequest(), ImagesReply)
        assert len(images.images) == 1  # excluded by pattern
        gone = await client.request(subject, PruneRequest(), PruneReply)
        assert gone.removed == 1 and gone.items[0].startswith("image ") and gone.freed > 0
        images = await client.request(subjects.agent(agent.id, VERB_IMAGES), ImagesRequest(), ImagesReply)
        assert images.images == []
    finally:
        await nc.drain()
    # pulled again on demand
    assert fleet.cli("run", "--rm", "--host", agent.id, "--network", "none", "busybox", "echo", "back").stdout == "back\n"
