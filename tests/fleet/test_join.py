"""Three hosts join a fleet with one command each (bad tokens: tests/fleet/test_tls.py)."""

from __future__ import annotations

import json
import time

import pytest

from tests.fleet.pushing import push_busybox

pytestmark = pytest.mark.root


def _first_node(h) -> None:
    h.up("--listen", h.addr, "--nats-port", "4222", "--registry-addr", f"{h.addr}:5000")


def _token(h, *args: str) -> str:
    return h.cli("fleet", "token", *args).stdout.strip()


def test_three_hosts_join_and_a_pinned_container_answers_from_host_3(make_fleet, tmp_path):
    fl = make_fleet(3)
    h1, h2, h3 = fl.hosts
    _first_node(h1)
    for h, own_nats in ((h2, []), (h3, ["--no-nats"])):
        h.up("--join", h1.addr, "--token", _token(h1), "--listen", h.addr, "--services", "runtime-agent", *own_nats)
    # host 2 runs a NATS node of its own (tests/fleet/test_nats_nodes.py); host 3 is only a client
    assert h2.stack["nats_pid"] and not h3.stack["nats_pid"]
    assert h3.stack["nats_url"] == f"nats://{h1.addr}:4222"

    for _ in range(50):  # an agent's first heartbeat follows its readiness closely, not at once
        agents = json.loads(h1.cli("--json", "agents").stdout)
        if len(agents) == 3:
            break
        time.sleep(0.2)
    assert sorted(a["agent_id"] for a in agents) == sorted(h.agent_id for h in fl.hosts), agents
    # each agent says where other hosts reach it: its --listen address
    assert {a["agent_id"]: a["address"] for a in agents} == {h.agent_id: h.addr for h in fl.hosts}
    hosts = json.loads(h1.cli("--json", "fleet", "ls").stdout)
    assert [(x["host"], x["listen"], x["services"], x["first"], x["node"]) for x in hosts] == [
        (h1.agent_id, h1.addr, hosts[0]["services"], True, False),
        (h2.agent_id, h2.addr, ["runtime-agent"], False, True), (h3.agent_id, h3.addr, ["runtime-agent"], False, False)]
    assert {"registry-gateway", "runtime-agent"} <= set(hosts[0]["services"])
    assert all(x["status"] == "ready" and x["last_seen"] for x in hosts), hosts

    push_busybox(h1, tmp_path, f"{h1.addr}:5000/fleet/busybox:1")

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
