"""`dockyard up`, `status` and shutdown, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import stat
import time

from shared import fleet
from tests.e2e.conftest import start_stack, stop_stack

ALL = {"layer-store", "registry-gateway", "builder", "runtime-agent", "garbage-collector"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_up_status_and_clean_stop(tmp_path):
    s = start_stack(tmp_path / "data")
    try:
        info = json.loads((s.data_dir / "stack.json").read_text())
        assert set(info["services"]) == ALL
        pw = s.data_dir / "admin-password"
        assert stat.S_IMODE(pw.stat().st_mode) == 0o600 and len(pw.read_text().strip()) >= 16

        out = s.cli("status", "--json")
        listed = json.loads(out.stdout)
        # beside the first node's join exchange, which `up` serves itself once it is up
        assert {x["name"] for x in listed["services"]} - {fleet.SERVICE} == ALL and listed["missing"] == []
        # each state bucket's replication: one node, one copy (the admin user is in the users bucket)
        users = {x["bucket"]: x for x in listed["buckets"]}["dockyard-users"]
        assert users["replicas"] == 1 and users["values"] >= 1 and not users["error"], listed["buckets"]
        assert "dockyard-users" in s.cli("status").stdout.split("BUCKET", 1)[1]

        # a service that up started and that no longer answers makes status fail
        gc_pid = info["pids"]["garbage-collector"]
        os.kill(gc_pid, signal.SIGSTOP)
        try:
            gone = s.cli("status", check=False)
        finally:
            os.kill(gc_pid, signal.SIGCONT)
        assert gone.returncode != 0 and "garbage-collector" in gone.stdout and "NOT ANSWERING" in gone.stdout

        # one that dies is restarted by up, like a supervisor would
        os.kill(gc_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = json.loads((s.data_dir / "stack.json").read_text())["pids"]
            if pids["garbage-collector"] != gc_pid and s.cli("status", check=False).returncode == 0:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("garbage-collector was not restarted:\n" + s.log("garbage-collector")[-2000:])
        info = json.loads((s.data_dir / "stack.json").read_text())
    finally:
        rc = stop_stack(s)
    assert rc == 0
    for name, pid in info["pids"].items():
        assert not _alive(pid), f"{name} still running after up stopped"
    assert not (s.data_dir / "stack.json").exists()


def test_up_exits_zero_on_sigterm_and_keeps_the_admin_password(tmp_path):
    s = start_stack(tmp_path / "data", only=["layer-store", "registry-gateway"])
    first = s.admin_password
    pids = json.loads((s.data_dir / "stack.json").read_text())["pids"]
    assert stop_stack(s) == 0
    assert not any(_alive(p) for p in pids.values())
    again = start_stack(s.data_dir, only=["layer-store", "registry-gateway"])
    try:
        assert again.admin_password == first  # created once, on the first start only
        assert json.loads(again.cli("status", "--json").stdout)["missing"] == []
    finally:
        assert stop_stack(again) == 0


def test_up_joins_an_existing_nats_given_after_the_command(tmp_path, nats_url):
    import subprocess
    import sys

    from tests.e2e.conftest import REPO_ROOT
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "DOCKYARD_NATS_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "up", "--nats", nats_url,
                             "--data-dir", str(data), "--only", "layer-store"], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (data / "stack.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.1)
        info = json.loads((data / "stack.json").read_text())
        assert info["nats_url"] == nats_url and info["services"] == ["layer-store"]
        assert not (data / "nats").exists()  # no embedded server of its own
        status = subprocess.run([sys.executable, "-m", "services.cli.main", "status", "--nats", nats_url,
                                 "--data-dir", str(data)], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "layer-store" in status.stdout, status.stdout + status.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def _listening(url: str) -> bool:
    import socket
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5) as s:
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


def test_a_killed_nats_server_comes_back_with_its_port_and_state(tmp_path):
    from tests.support.images import busybox_layout, skopeo_env
    from tests.e2e.conftest import skopeo
    s = start_stack(tmp_path / "data", only=["layer-store", "registry-gateway"])
    try:
        layout = tmp_path / "layout"
        busybox_layout(layout, tmp_path / "work")
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", s.admin_creds, f"oci:{layout}:latest",
               f"docker://{s.registry_addr}/dyst/kept:1", env=skopeo_env(tmp_path / "home"))
        before = json.loads((s.data_dir / "stack.json").read_text())
        os.kill(before["nats_pid"], signal.SIGKILL)

        deadline = time.monotonic() + 5  # what the issue asks of the supervisor
        while time.monotonic() < deadline:
            info = json.loads((s.data_dir / "stack.json").read_text())
            if info["nats_pid"] not in (0, before["nats_pid"]) and _listening(s.nats_url):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("nats-server was not back within 5 s:\n" + (s.data_dir / "up.log").read_text())
        assert info["nats_url"] == before["nats_url"] and info["pids"] == before["pids"]

        # the services reconnect by themselves, and the tag pushed before (KV state) is still there
        deadline = time.monotonic() + 30
        while (p := s.cli("images", "--json", check=False)).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert p.returncode == 0, p.stderr
        assert any(i["repository"] == "dyst/kept" and i["tag"] == "1" for i in json.loads(p.stdout)), p.stdout
    finally:
        assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text()
    assert not _alive(info["nats_pid"])


async def test_taken_default_ports_become_free_ones_that_up_reports(tmp_path):
    import socket
    import urllib.error
    import urllib.request

    from services.cli.stack_runner import StackRunner
    from shared import config
    with socket.create_server(("127.0.0.1", 0)) as nats_taken, socket.create_server(("127.0.0.1", 0)) as reg_taken:
        np, rp = nats_taken.getsockname()[1], reg_taken.getsockname()[1]
        cfg = config.load(data_dir=str(tmp_path / "data"), registry_addr=f"127.0.0.1:{rp}")
        runner = StackRunner(cfg, services=["layer-store", "registry-gateway"], nats_port=np,
                             nats_fallback=True, registry_fallback=True)
        try:
            await runner.start()
            info = json.loads((tmp_path / "data" / "stack.json").read_text())
            nats_port = int(info["nats_url"].rpartition(":")[2])
            reg_port = int(info["registry"].rpartition(":")[2])
            assert nats_port not in (0, np) and reg_port not in (0, rp)
            banner = runner.banner()
            assert f"NATS port {np} is taken; NATS listens on {nats_port}" in banner
            assert f"registry port 127.0.0.1:{rp} is taken; the registry listens on 127.0.0.1:{reg_port}" in banner
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{reg_port}/v2/", timeout=10)
            except urllib.error.HTTPError as e:
                assert e.code == 401  # the gateway answers on the port up bound for it
            else:
                raise AssertionError("/v2/ answered without asking for credentials")
        finally:
            await runner.stop()
    assert not (tmp_path / "data" / "stack.json").exists()
