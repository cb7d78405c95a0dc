"""Three hosts join a fleet with one command each; tokens that must not work do not."""

from __future__ import annotations

import json
import time

import msgspec
import pytest

from shared import credentials, fleet as fleetmsg
from shared.permissions import joiner
from tests.support.images import busybox_layout, skopeo_env

pytestmark = pytest.mark.root


def _first_node(h) -> None:
    h.up("--listen", h.addr, "--nats-port", "4222", "--registry-addr", f"{h.addr}:5000")


def _token(h, *args: str) -> str:
    return h.cli("fleet", "token", *args).stdout.strip()


def test_three_hosts_join_and_a_pinned_container_answers_from_host_3(make_fleet, tmp_path):
    fl = make_fleet(3)
    h1, h2, h3 = fl.hosts
    _first_node(h1)
    for h in (h2, h3):
        h.up("--join", h1.addr, "--token", _token(h1), "--listen", h.addr, "--services", "runtime-agent")

    for _ in range(50):  # an agent's first heartbeat follows its readiness closely, not at once
        agents = json.loads(h1.cli("--json", "agents").stdout)
        if len(agents) == 3:
            break
        time.sleep(0.2)
    assert sorted(a["agent_id"] for a in agents) == sorted(h.agent_id for h in fl.hosts), agents
    # each agent says where other hosts reach it: its --listen address
    assert {a["agent_id"]: a["address"] for a in agents} == {h.agent_id: h.addr for h in fl.hosts}
    hosts = json.loads(h1.cli("--json", "fleet", "ls").stdout)
    assert [(x["host"], x["listen"], x["services"]) for x in hosts] == [
        (h2.agent_id, h2.addr, ["runtime-agent"]), (h3.agent_id, h3.addr, ["runtime-agent"])]

    layout = tmp_path / "layout"
    busybox_layout(layout, tmp_path / "work")
    password = (h1.data_dir / "admin-password").read_text().strip()
    push = h1.exec("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"admin:{password}",
                   f"oci:{layout}:latest", f"docker://{h1.addr}:5000/fleet/busybox:1", timeout=120)
    assert push.returncode == 0, push.stderr

    run = h1.cli("run", "-d", "--host", h3.agent_id, "-p", "8080:80", "fleet/busybox:1",
                 "sh", "-c", f"echo served by {h3.agent_id} > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
                 check=False)
    assert run.returncode == 0, run.stderr + h3.log("runtime-agent")
    body = ""
    for _ in range(50):  # httpd binds a moment after the container starts
        got = h1.exec("curl", "-sS", "--max-time", "2", f"http://{h3.addr}:8080/index.html")
        body = got.stdout
        if got.returncode == 0:
            break
        time.sleep(0.2)
    assert body == f"served by {h3.agent_id}\n", got.stderr + h3.log("runtime-agent")


def test_used_expired_and_forged_tokens_are_refused(make_fleet, tmp_path):
    fl = make_fleet(2)
    h1, h2 = fl.hosts
    _first_node(h1)
    join = ("--join", h1.addr, "--listen", h2.addr, "--services", "runtime-agent")

    used = _token(h1)
    h2.up(*join, "--token", used)
    h2.stop()
    (h2.data_dir / "fleet-join.json").unlink()  # as a new host would be
    p = h2.run_up(*join, "--token", used)
    assert p.returncode != 0 and "already used" in p.stderr, p.stderr

    expired = _token(h1, "--ttl", "1s")
    time.sleep(1.2)
    p = h2.run_up(*join, "--token", expired)
    assert p.returncode != 0 and "expired" in p.stderr, p.stderr

    # a valid joiner credential with a secret nobody issued
    tok = fleetmsg.decode_token(_token(h1))
    forged_secret = fleetmsg.encode_token(msgspec.structs.replace(tok, secret="x" * 43))
    p = h2.run_up(*join, "--token", forged_secret)
    assert p.returncode != 0 and "not one this fleet issued" in p.stderr, p.stderr

    # a joiner credential signed by keys that are not the fleet's
    other = credentials.Authority(credentials.credentials_dir(tmp_path / "other"))
    fake = credentials.read_creds_text(other.issue("joiner-x", joiner("x"), expires=tok.exp))
    forged_jwt = fleetmsg.encode_token(msgspec.structs.replace(tok, jwt=fake.jwt, seed=fake.seed))
    p = h2.run_up(*join, "--token", forged_jwt)
    assert p.returncode != 0 and "refused the join token" in p.stderr, p.stderr
