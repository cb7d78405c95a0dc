"""A joined host's NATS node as a leaf node of the first node's (shared/natsnodes.py), on
loopback: it relays its host's services into the first node's JetStream, and only them; the
first node's leaf port is picked, kept over a restart, and moved only when allowed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from shared import bus, credentials, fleet, natsnodes, permissions
from shared import subjects as s
from shared.errors import Unavailable
from shared.natsserver import EmbeddedNats

AGENT = "h3"
EVERYTHING = permissions.Permissions((">",), (">",))


@pytest.fixture
def nodes(tmp_path):
    """(first node, joined node, creds file of principal -> path): real nats-servers, one trust."""
    cdir = credentials.credentials_dir(tmp_path / "first")
    authority = credentials.Authority(cdir)
    trust = authority.server_config()
    hub_conf = cdir / "nats-server.conf"
    credentials.write_secret(hub_conf, (trust + natsnodes.default_js_domain(authority.account_pub)).encode())
    grants = [permissions.service(s.RUNTIME_AGENT, agent_id=AGENT), permissions.service(permissions.SUPERVISOR)]
    creds = {}
    for key, (name, perms) in {
            "node": (permissions.node(AGENT), permissions.relay(grants)),
            "agent": (permissions.principal(s.RUNTIME_AGENT, AGENT), grants[0]), "all": ("all", EVERYTHING),
            "admin": (permissions.person("admin"), permissions.role("admin", "admin"))}.items():
        creds[key] = tmp_path / f"{key}.creds"
        credentials.write_secret(creds[key], authority.issue(name, perms).encode())
    hub = EmbeddedNats(tmp_path / "first" / "nats", config_file=hub_conf, leaf_tls="").start()
    jdir = credentials.credentials_dir(tmp_path / "joined")
    node_conf = jdir / "nats-server.conf"
    credentials.write_secret(node_conf, natsnodes.joined_node_config(
        name=AGENT, trust=trust, cred_dir=jdir, hubs=[hub.leaf_url], creds=creds["node"],
        account_pub=authority.account_pub).encode())
    node = EmbeddedNats(tmp_path / "joined" / "nats", config_file=node_conf, jetstream=False)
    try:
        node.start()
        yield hub, node, creds
    finally:
        node.stop()
        hub.stop()


async def _retry(make, timeout: float = 10.0):
    """`make()` once the node's leaf connection is up (it connects a moment after it listens)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            return await asyncio.wait_for(make(), 1)
        except Exception:  # noqa: BLE001 - no responders yet
            await asyncio.sleep(0.05)
    return await make()


async def test_a_node_relays_its_hosts_services_into_the_first_nodes_jetstream_and_nothing_else(nodes):
    hub, node, creds = nodes
    assert hub.leaf_url == f"nats-leaf://127.0.0.1:{hub.leaf_port}" and hub.leaf_port > 0
    assert not (node.store_dir / "jetstream").exists()  # the node keeps no state
    agent = await bus.connect(node.url, creds=str(creds["agent"]), ca="")
    first = await bus.connect(hub.url, creds=str(creds["all"]), ca="")
    admin_on_node = await bus.connect(node.url, creds=str(creds["admin"]), ca="")
    try:
        kv = await _retry(lambda: agent.jetstream().create_key_value(bucket=s.KV_AGENTS))
        await kv.put(AGENT, b"beat")
        # stored on the first node: read there
        assert (await (await first.jetstream().key_value(s.KV_AGENTS)).get(AGENT)).value == b"beat"

        async def answer(msg):
            await msg.respond(b"{}")
        await first.subscribe(fleet.LIST, cb=answer)
        await first.flush()
        # an admin may ask the exchange, but not through a node that relays an agent's host
        with pytest.raises(Exception):
            await admin_on_node.request(fleet.LIST, b"{}", timeout=1)
        admin = await bus.connect(hub.url, creds=str(creds["admin"]), ca="")
        try:
            assert (await admin.request(fleet.LIST, b"{}", timeout=5)).data == b"{}"
        finally:
            await admin.close()
    finally:
        for nc in (agent, first, admin_on_node):
            await nc.close()


def test_the_leaf_port_is_kept_over_a_restart_and_moves_only_when_allowed(tmp_path):
    srv = EmbeddedNats(tmp_path / "a", leaf_tls="").start()
    try:
        port = srv.leaf_port
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        srv.start()
        assert srv.leaf_port == port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            assert c.recv(4) == b"INFO"
        with pytest.raises(Unavailable, match=f"127.0.0.1:{port} \\(leaf nodes\\).*taken"):
            EmbeddedNats(tmp_path / "b", leaf_tls="", leaf_port=port).start()
        with EmbeddedNats(tmp_path / "c", leaf_tls="", leaf_port=port, fallback=True) as other:
            assert other.leaf_port not in (0, port) and other.running
    finally:
        srv.stop()
