"""run/create flags, health checks and ps listing flags (issue 11) against real agents and crun."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from examples.busybox import busybox_rootfs, oci_layout, skopeo_env, tar_dir
from tests.e2e.test_agent_fleet import CGROUP_PARENT, running_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

GiB = 1 << 30
HEALTHY_IMAGE = "library/checked:latest"


def _push_checked_image(root: Path, registry: str) -> None:
    """busybox with EXPOSE 8080, a HEALTHCHECK, STOPSIGNAL SIGUSR1 and an httpd as its command."""
    layout = root / "checked-layout"
    oci_layout(layout, [tar_dir(busybox_rootfs(root / "checked-rootfs"))],
               cmd=["httpd", "-f", "-p", "8080", "-h", "/etc"])
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    config["config"].update({"ExposedPorts": {"8080/tcp": {}}, "StopSignal": "SIGUSR1",
                             "Healthcheck": {"Test": ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8080/hostname"],
                                             "Interval": 200_000_000, "Retries": 2}})
    from examples.busybox import write_blob
    manifest["config"].update(write_blob(layout, json.dumps(config).encode()))
    m = write_blob(layout, json.dumps(manifest).encode())
    index["manifests"] = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
                           "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    (layout / "index.json").write_text(json.dumps(index))
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                    f"docker://{registry}/{HEALTHY_IMAGE}"], env=skopeo_env(root / "home"), check=True,
                   capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def fleet(nats_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("runflags")
    with running_fleet(root, nats_url, {1: 2 * GiB, 2: 4 * GiB}) as f:
        _push_checked_image(root, f.registry)
        yield f


def _wait(pred, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _status(fleet, ref: str) -> str:
    return fleet.inspect(ref)["State"]["Status"]


def test_create_then_start_on_another_agent(fleet):
    other = fleet.agents[0].id  # not the one placement would pick
    cid = fleet.cli("create", "--name", "made", "--host", other, "--network", "none", "busybox",
                    "sh", "-c", "echo made it").stdout.strip()
    assert len(cid) == 64
    info = fleet.inspect("made")
    assert (info["State"]["Status"], info["Host"]) == ("created", other)
    assert fleet.cli("ps", "-q").stdout.strip() == ""  # created is not running
    assert cid[:12] in fleet.cli("ps", "-a", "-q", "--filter", "status=created").stdout
    fleet.cli("start", "made")
    _wait(lambda: _status(fleet, "made") == "exited", what="made to exit")
    assert fleet.cli("logs", "made").stdout == "made it\n"
    fleet.cli("rm", "made")


def test_cpus_pids_limit_and_ulimit(fleet):
    cid = fleet.cli("run", "-d", "--name", "limited", "--network", "none", "--cpus", "0.5", "--pids-limit", "20",
                    "busybox", "sleep", "60").stdout.strip()
    cg = Path("/sys/fs/cgroup")
    assert int((cg / "cpu" / CGROUP_PARENT.lstrip("/") / cid / "cpu.cfs_quota_us").read_text()) == 50000
    assert int((cg / "cpu" / CGROUP_PARENT.lstrip("/") / cid / "cpu.cfs_period_us").read_text()) == 100000
    assert (cg / "pids" / CGROUP_PARENT.lstrip("/") / cid / "pids.max").read_text().strip() == "20"
    hc = fleet.inspect("limited")["HostConfig"]
    assert (hc["NanoCpus"], hc["PidsLimit"]) == (500_000_000, 20)
    fleet.cli("rm", "-f", "limited")
    p = fleet.cli("run", "--rm", "--network", "none", "--ulimit", "nofile=512:1024", "busybox",
                  "sh", "-c", "ulimit -n; ulimit -Hn")
    assert p.stdout.split() == ["512", "1024"]
    # 10 processes at most: a later fork fails inside the container
    p = fleet.cli("run", "--rm", "--network", "none", "--pids-limit", "10", "busybox", "sh", "-c",
                  "for i in $(seq 30); do sleep 5 & done; echo all started", check=False)
    assert "all started" not in p.stdout and "fork" in p.stderr, (p.returncode, p.stdout, p.stderr)


def test_read_only_rootfs_with_a_tmpfs(fleet):
    p = fleet.cli("run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/scratch:size=1m", "busybox",
                  "sh", "-c", "touch /x; echo rc=$?; echo hi > /scratch/f && cat /scratch/f; "
                              "grep ' /scratch ' /proc/mounts", check=False)
    assert "Read-only file system" in p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "rc=1" and lines[1] == "hi"
    assert lines[2].split()[2] == "tmpfs" and "size=1024k" in lines[2] and "noexec" in lines[2]


def _zombies(pid: int) -> list[int]:
    """Zombie processes among the descendants of host pid `pid`."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        if state == "Z":
            found.append(p)
        todo += [int(c) for c in children]
    return found


def test_init_reaps_zombies(fleet):
    # The orphaned `sleep 0.2` goes to pid 1; `sleep 30` as pid 1 never reaps it, tini does.
    cmd = ["sh", "-c", "(sleep 0.2 &); exec sleep 30"]
    fleet.cli("run", "-d", "--name", "noinit", "--network", "none", "busybox", *cmd)
    fleet.cli("run", "-d", "--name", "withinit", "--network", "none", "--init", "busybox", *cmd)
    try:
        _wait(lambda: _zombies(fleet.inspect("noinit")["State"]["Pid"]), what="a zombie without --init")
        time.sleep(0.5)
        pid = fleet.inspect("withinit")["State"]["Pid"]
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "docker-init"  # tini, mounted as docker does
        assert _zombies(pid) == []
        assert fleet.inspect("withinit")["HostConfig"]["Init"] is True
    finally:
        fleet.cli("rm", "-f", "noinit", "withinit")


def test_add_host_and_dns(fleet):
    p = fleet.cli("run", "--rm", "--add-host", "db.local:10.1.2.3", "--dns", "10.9.9.9", "busybox",
                  "sh", "-c", "cat /etc/hosts; echo ---; cat /etc/resolv.conf")
    hosts, resolv = p.stdout.split("---\n")
    assert "10.1.2.3\tdb.local" in hosts.splitlines()
    assert [ln for ln in resolv.splitlines() if ln.startswith("nameserver")] == ["nameserver 10.9.9.9"]


def _cap_eff(out: str) -> int:
    return int(next(ln for ln in out.splitlines() if ln.startswith("CapEff:")).split()[1], 16)


CAP_CHOWN, CAP_NET_ADMIN, CAP_SYS_ADMIN = 0, 12, 21


def test_cap_add_cap_drop_and_privileged(fleet):
    eff = _cap_eff(fleet.cli("run", "--rm", "--network", "none", "--cap-drop", "CHOWN", "--cap-add", "NET_ADMIN",
                             "busybox", "cat", "/proc/self/status").stdout)
    assert not eff & (1 << CAP_CHOWN) and eff & (1 << CAP_NET_ADMIN) and not eff & (1 << CAP_SYS_ADMIN)
    p = fleet.cli("run", "--rm", "--network", "none", "--cap-drop", "CHOWN", "busybox", "busybox", "chown", "1", "/tmp",
                  check=False)
    assert p.returncode != 0 and "Operation not permitted" in p.stderr
    # The CLI of this fleet is the admin: --privileged goes through the admin-only verb.
    p = fleet.cli("run", "--rm", "--network", "none", "--privileged", "busybox", "sh", "-c",
                  "cat /proc/self/status; mkdir /mnt; busybox mount -t tmpfs none /mnt && echo mounted")
    assert _cap_eff(p.stdout) & (1 << CAP_SYS_ADMIN) and p.stdout.splitlines()[-1] == "mounted"


def test_seccomp_profile_file_as_the_admin(fleet, tmp_path):
    prof = tmp_path / "no-mkdir.json"
    prof.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    p = fleet.cli("run", "--rm", "--network", "none", "--security-opt", f"seccomp={prof}",
                  "--security-opt", "no-new-privileges", "busybox", "mkdir", "/tmp/d", check=False)
    assert p.returncode == 1 and "Operation not permitted" in p.stderr
    assert fleet.cli("run", "--rm", "--network", "none", "busybox", "mkdir", "/tmp/d").returncode == 0


def test_stop_signal_and_stop_timeout(fleet):
    fleet.cli("run", "-d", "--name", "usr1", "--network", "none", "--stop-signal", "USR1", "busybox", "sh", "-c",
              "trap 'echo got usr1; exit 7' USR1; while true; do sleep 0.1; done")
    time.sleep(0.3)
    fleet.cli("stop", "usr1")
    info = fleet.inspect("usr1")
    assert (info["State"]["ExitCode"], info["Config"]["StopSignal"]) == (7, "USR1")
    assert "got usr1" in fleet.cli("logs", "usr1").stdout
    # TERM ignored: with --stop-timeout 1, a plain `stop` kills after 1 s, not docker's 10
    fleet.cli("run", "-d", "--name", "stubborn", "--network", "none", "--stop-timeout", "1", "busybox", "sh", "-c",
              "trap '' TERM; while true; do sleep 0.1; done")
    fleet.cli("stop", "stubborn", timeout=8)
    assert fleet.inspect("stubborn")["State"]["ExitCode"] == 137
    fleet.cli("rm", "usr1", "stubborn")


def test_a_failing_health_command_turns_unhealthy_and_restart_does_not_act(fleet):
    # on the agent placement would not pick: every verb reaches the container where it is
    fleet.cli("run", "-d", "--name", "sick", "--host", fleet.agents[0].id, "--network", "none", "--restart", "always",
              "--health-cmd", "test -f /tmp/ok", "--health-interval", "200ms", "--health-retries", "2",
              "busybox", "sh", "-c", "touch /tmp/ok; sleep 1.5; rm /tmp/ok; exec sleep 60")
    _wait(lambda: "(healthy)" in fleet.cli("ps", "--filter", "name=sick").stdout, what="healthy")
    _wait(lambda: fleet.inspect("sick")["State"]["Health"]["Status"] == "unhealthy", what="unhealthy")
    info = fleet.inspect("sick")
    assert info["State"]["Health"]["FailingStreak"] >= 2
    assert info["State"]["Health"]["Log"][-1]["ExitCode"] == 1
    assert (info["State"]["Running"], info["State"]["RestartCount"]) == (True, 0)
    rows = fleet.cli("ps", "--filter", "health=unhealthy", "--format", "{{.Names}} {{.Status}}").stdout
    assert rows.startswith("sick Up ") and rows.strip().endswith("(unhealthy)")
    fleet.cli("rm", "-f", "sick")


def test_image_healthcheck_stopsignal_and_publish_all(fleet):
    registry = fleet.registry
    image = f"{registry}/{HEALTHY_IMAGE}"
    fleet.cli("run", "-d", "--name", "checked", "-P", image)
    info = _wait(lambda: (i := fleet.inspect("checked"))["State"].get("Health", {}).get("Status") == "healthy"
                 and i, what="the image's check to pass")
    assert info["Config"]["StopSignal"] == "SIGUSR1"
    assert info["Config"]["Healthcheck"]["Interval"] == 200_000_000
    (port,) = info["NetworkSettings"]["Ports"]
    assert port["container_port"] == 8080 and port["host_port"] != 0
    body = urllib.request.urlopen(f"http://127.0.0.1:{port['host_port']}/hostname", timeout=5).read()
    assert body.strip() == info["Config"]["Hostname"].encode()
    assert f"->8080/tcp" in fleet.cli("ps", "--filter", "ancestor=" + image, "--format", "{{.Ports}}").stdout
    fleet.cli("run", "-d", "--name", "unchecked", "--no-healthcheck", image)
    assert "Health" not in fleet.inspect("unchecked")["State"]
    fleet.cli("rm", "-f", "checked", "unchecked")


def test_privileged_is_refused_on_the_operator_verb(fleet, nats_url):
    import asyncio

    from shared import bus, permissions, subjects
    from shared.errors import PermissionDenied
    from shared.messages.agent import NEEDS_PRIVILEGE, VERB_RUN, RunReply, RunRequest
    from shared.messages.runflags import RunFlags

    async def run(flags: RunFlags) -> RunReply:
        nc = await bus.connect(nats_url)
        try:
            req = RunRequest(image="busybox", command=["true"], rm=True, network="none", flags=flags)
            return await bus.BusClient(nc).request(subjects.agent(fleet.agents[0].id, VERB_RUN), req, RunReply,
                                                   timeout=60)
        finally:
            await nc.drain()

    for flags in (RunFlags(privileged=True), RunFlags(cap_add=["SYS_ADMIN"]), RunFlags(cap_add=["ALL"]),
                  RunFlags(seccomp_profile="unconfined"), RunFlags(seccomp_profile='{"defaultAction": "SCMP_ACT_ALLOW"}')):
        with pytest.raises(PermissionDenied) as ei:
            asyncio.run(run(flags))
        assert ei.value.detail_code == NEEDS_PRIVILEGE
    subject = subjects.agent(fleet.agents[0].id, subjects.AGENT_RUN_PRIVILEGED)
    assert not any(permissions.matches(p, subject) for p in permissions.role("u", "operator").publish)
    assert any(permissions.matches(p, subject) for p in permissions.role("u", "admin").publish)


def test_ps_filters_format_last_and_size(fleet):
    a1, a2 = fleet.agents[0].id, fleet.agents[1].id
    fleet.cli("run", "-d", "--name", "lbl", "-l", "tier=front", "--host", a1, "--network", "none", "busybox",
              "sh", "-c", "head -c 5000 /dev/zero > /big; exec sleep 60")
    fleet.cli("run", "--name", "done", "--host", a2, "--network", "none", "busybox", "true")
    try:
        fmt = lambda *a: fleet.cli("ps", *a).stdout.splitlines()  # noqa: E731
        assert fmt("--filter", "label=tier=front", "--format", "{{.Names}}\\t{{.Host}}") == [f"lbl\t{a1}"]
        assert fmt("-a", "--filter", "status=exited", "--filter", "name=done", "--format", "{{.Names}}") == ["done"]
        assert fmt("-a", "--filter", f"host={a2}", "--filter", "name=done", "-q") == [
            fleet.inspect("done")["Id"][:12]]
        assert fmt("-n", "1", "--format", "{{.Names}}") == ["done"]
        table = fmt("--filter", "name=lbl", "--format", "table {{.ID}}\\t{{.Names}}\\t{{.State}}")
        assert table[0].split() == ["CONTAINER", "ID", "NAMES", "STATE"] and table[1].split()[1:] == ["lbl", "running"]
        (obj,) = [json.loads(x) for x in fmt("--filter", "name=lbl", "--format", "json")]
        assert obj["Names"] == "lbl" and obj["Labels"] == "tier=front" and obj["Host"] == a1
        sized = fmt("-s", "--filter", "name=lbl")
        assert sized[0].split()[-1] == "SIZE" and sized[1].split()[-1] == "4.9KiB"
    finally:
        fleet.cli("rm", "-f", "lbl", "done")


def test_images_and_agents_format_and_quiet(fleet):
    a = fleet.agents[1].id
    lines = fleet.cli("images", "--host", a, "--format", "{{.Repository}}:{{.Tag}}").stdout.splitlines()
    assert f"{fleet.registry}/library/busybox:latest" in lines
    ids = fleet.cli("images", "--host", a, "-q").stdout.split()
    assert ids and all(len(i) == 12 for i in ids) and len(ids) == len(set(ids))
    assert set(fleet.cli("agents", "-q").stdout.split()) == {x.id for x in fleet.agents}
    table = fleet.cli("agents", "--format", "table {{.ID}}\\t{{.Status}}").stdout.splitlines()
    assert table[0].split() == ["AGENT", "STATUS"]
    assert sorted(r.split() for r in table[1:]) == sorted([x.id, "ready"] for x in fleet.agents)
