"""Joined hosts run NATS nodes of their own, leaf nodes of the first node's: one of them lost
(kill -9), the fleet goes on and its host's services fail over; back, it relays again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from shared import bus, subjects
from tests.support.images import busybox_layout

pytestmark = pytest.mark.root


def _wait(what, check, timeout: float = 30.0):
    """`check()` until it returns something true; a hang guard, not a speed requirement."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.3)


def _alive(pid: int) -> bool:
    try:
        return b"nats-server" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False


def _or_none(f, *args):
    try:
        return f(*args)
    except Exception:  # noqa: BLE001 - not yet: the node is starting, its leaf connecting
        return None


def _through_node(h, principal: str) -> tuple[bool, bool]:
    """Over `h`'s own node only, with its `principal` credential: (the agents bucket answers,
    the fleet exchange answers). The first crosses the leaf connection into the first node's
    JetStream; the second is not what the host's services may do, so the node does not relay it."""
    from shared import fleet

    async def go():
        nc = await bus.connect(f"nats://{h.addr}:4222", creds=str(h.data_dir / "credentials" / f"{principal}.creds"),
                               ca=str(h.data_dir / "credentials" / "ca.pem"), connect_timeout=3)
        try:
            kv = await nc.jetstream().key_value(subjects.KV_AGENTS)
            beat = await kv.get(bus.kv_key(h.agent_id))
            try:
                await nc.request(fleet.LIST, b"{}", timeout=1)
                exchange = True
            except Exception:  # noqa: BLE001 - refused by the node's permissions, or no responders
                exchange = False
            return bool(beat.value), exchange
        finally:
            await nc.close()

    return asyncio.run(go())


def _push(h1, layout, tag: str):
    password = (h1.data_dir / "admin-password").read_text().strip()
    return h1.exec("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"admin:{password}",
                   f"oci:{layout}:latest", f"docker://{h1.addr}:5000/fleet/busybox:{tag}", timeout=120)


def test_a_joined_hosts_nats_node_lost_and_back_loses_nothing(make_fleet, tmp_path):
    fl = make_fleet(3)
    h1, h2, h3 = fl.hosts
    h1.up("--listen", h1.addr, "--nats-port", "4222", "--registry-addr", f"{h1.addr}:5000")
    for h in (h2, h3):
        h.up("--join", h1.addr, "--token", h1.cli("fleet", "token").stdout.strip(), "--listen", h.addr,
             "--services", "runtime-agent")
    _wait("three agents", lambda: len(json.loads(h1.cli("--json", "agents").stdout)) == 3)
    agent3 = f"runtime-agent-{h3.agent_id}"
    assert all(_alive(h.stack["nats_pid"]) for h in (h2, h3))  # each joined host runs its own node
    assert _through_node(h3, agent3) == (True, False)

    layout = tmp_path / "layout"
    busybox_layout(layout, tmp_path / "work")
    push = _push(h1, layout, "1")
    assert push.returncode == 0, push.stderr

    killed = h3.stack["nats_pid"]
    os.kill(killed, signal.SIGKILL)
    # host 1 goes on: the registry, a push, a pull, and a run on host 3, whose agent is now on host 1's NATS
    assert "fleet/busybox" in h1.cli("images").stdout
    push = _push(h1, layout, "2")
    assert push.returncode == 0, push.stderr
    pulled = h1.exec("skopeo", "inspect", "--tls-verify=false", "--creds",
                     f"admin:{(h1.data_dir / 'admin-password').read_text().strip()}",
                     f"docker://{h1.addr}:5000/fleet/busybox:2", timeout=60)
    assert pulled.returncode == 0 and json.loads(pulled.stdout)["Digest"].startswith("sha256:"), pulled.stderr
    run = h1.cli("run", "--rm", "--host", h3.agent_id, "fleet/busybox:2", "echo", "from", "host", "3", check=False)
    assert run.returncode == 0 and run.stdout == "from host 3\n", run.stderr + h3.log("runtime-agent")
    run = h1.cli("run", "--rm", "--host", h2.agent_id, "fleet/busybox:1", "echo", "from", "host", "2", check=False)
    assert run.returncode == 0 and run.stdout == "from host 2\n", run.stderr + h2.log("runtime-agent")

    # `up` brings the node back on its port; it relays host 3's traffic into the fleet again
    back = _wait("host 3's node restarted", lambda: h3.stack["nats_pid"] != killed and _alive(h3.stack["nats_pid"]))
    assert back
    assert _wait("host 3's node relays again", lambda: _or_none(_through_node, h3, agent3)) == (True, False)
    ps = json.loads(h1.cli("--json", "agents").stdout)
    assert {a["agent_id"]: a["lost"] for a in ps} == {h.agent_id: False for h in fl.hosts}, ps
    # the state stays on the first node: each bucket one copy there, as `status` says
    tags = {b["bucket"]: b for b in json.loads(h1.cli("--json", "status").stdout)["buckets"]}[subjects.KV_TAGS]
    assert (tags["replicas"], tags["peers"], tags["values"]) == (1, [h1.agent_id], 2), tags

    # removed, the host's node is cut off too: its credential was revoked with the others
    h1.cli("fleet", "remove", h3.agent_id)
    _wait("host 3's node cut off", lambda: _or_none(_through_node, h3, agent3) is None, timeout=15)
    assert _through_node(h2, f"runtime-agent-{h2.agent_id}") == (True, False)  # not host 2's
