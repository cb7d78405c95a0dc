"""Joined hosts run NATS nodes of their own, leaf nodes of the first node's: one of them lost
(kill -9), the fleet goes on and its host's services fail over; back, it relays again."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl

import pytest

from shared import subjects
from tests.fleet.pushing import admin_password, cert_dir, push_busybox
from tests.support.waiting import wait_for

pytestmark = pytest.mark.root


def _alive(pid: int) -> bool:
    try:
        return b"nats-server" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False


def _via_node(h, creds, *args: str) -> str:
    """`dockyard ARGS` from inside host `h` over its own node only (it listens on loopback) with
    `creds`: the output, "" if it failed."""
    p = h.cli("--nats", "nats://127.0.0.1:4222", "--creds", str(creds), "--json", *args, check=False, timeout=30)
    return p.stdout if p.returncode == 0 else ""


def _relays(h) -> bool:
    """Host `h`'s agent reads the agents bucket through its node: across the leaf connection,
    in the first node's JetStream."""
    return h.agent_id in _via_node(h, h.data_dir / "credentials" / f"runtime-agent-{h.agent_id}.creds", "agents")


def _leaf_refuses_without_a_fleet_certificate(h1) -> bool:
    """The first node's leaf port over TLS with no client certificate: it says INFO, then the
    handshake (or the first read after it) fails; nothing of the bus is spoken."""
    ctx = ssl.create_default_context(cafile=str(h1.data_dir / "credentials" / "ca.pem"))
    with socket.create_connection((h1.addr, 7422), timeout=5) as raw:
        info = raw.recv(4096)
        assert info.startswith(b"INFO") and b'"tls_required":true' in info, info
        try:
            with ctx.wrap_socket(raw, server_hostname=h1.addr) as tls_sock:
                tls_sock.sendall(b"CONNECT {}\r\nPING\r\n")
                return tls_sock.recv(4096) == b""
        except (ssl.SSLError, ConnectionError):
            return True


def test_a_joined_hosts_nats_node_lost_and_back_loses_nothing(make_fleet, tmp_path):
    fl = make_fleet(3)
    h1, h2, h3 = fl.hosts
    h1.up("--listen", h1.addr, "--nats-port", "4222", "--registry-addr", f"{h1.addr}:5000")
    # a host may not take the first node's name: its NATS node would be named the same
    own_id, h2.env["DOCKYARD_AGENT_ID"] = h2.env["DOCKYARD_AGENT_ID"], h1.agent_id
    refused = h2.run_up("--join", h1.addr, "--token", h1.cli("fleet", "token").stdout.strip(),
                        "--listen", h2.addr, "--services", "runtime-agent")
    h2.env["DOCKYARD_AGENT_ID"] = own_id
    assert refused.returncode != 0 and "already in the fleet" in refused.stderr, refused.stderr
    for h in (h2, h3):
        h.up("--join", h1.addr, "--token", h1.cli("fleet", "token").stdout.strip(), "--listen", h.addr,
             "--services", "runtime-agent")
    wait_for("three agents", lambda: len(json.loads(h1.cli("--json", "agents").stdout)) == 3)
    assert _leaf_refuses_without_a_fleet_certificate(h1)
    assert all(_alive(h.stack["nats_pid"]) for h in (h2, h3))  # each joined host runs its own node
    assert [x["node"] for x in json.loads(h1.cli("--json", "fleet", "ls").stdout)] == [False, True, True]
    assert "leaf node" in h1.cli("fleet", "ls").stdout
    assert _relays(h3)
    # a person's command is not what the host's services may do: the node does not relay it
    admin = h1.data_dir / "credentials" / "admin.creds"
    assert _via_node(h3, admin, "fleet", "ls") == "" and h1.cli("--json", "fleet", "ls").stdout

    push_busybox(h1, tmp_path, f"{h1.addr}:5000/fleet/busybox:1")

    killed = h3.stack["nats_pid"]
    os.kill(killed, signal.SIGKILL)
    # host 1 goes on: the registry, a push, a pull, and a run on host 3, whose agent is now on host 1's NATS
    assert "fleet/busybox" in h1.cli("images").stdout
    push_busybox(h1, tmp_path, f"{h1.addr}:5000/fleet/busybox:2")
    pulled = h1.exec("skopeo", "inspect", "--cert-dir", cert_dir(h1, tmp_path / "certs"), "--creds",
                     f"admin:{admin_password(h1)}", f"docker://{h1.addr}:5000/fleet/busybox:2", timeout=60)
    assert pulled.returncode == 0 and json.loads(pulled.stdout)["Digest"].startswith("sha256:"), pulled.stderr
    run = h1.cli("run", "--rm", "--host", h3.agent_id, "fleet/busybox:2", "echo", "from", "host", "3", check=False)
    assert run.returncode == 0 and run.stdout == "from host 3\n", run.stderr + h3.log("runtime-agent")
    run = h1.cli("run", "--rm", "--host", h2.agent_id, "fleet/busybox:1", "echo", "from", "host", "2", check=False)
    assert run.returncode == 0 and run.stdout == "from host 2\n", run.stderr + h2.log("runtime-agent")

    # `up` brings the node back on its port; it relays host 3's traffic into the fleet again
    back = wait_for("host 3's node restarted", lambda: h3.stack["nats_pid"] != killed and _alive(h3.stack["nats_pid"]))
    assert back
    assert wait_for("host 3's node relays again", lambda: _relays(h3))
    ps = json.loads(h1.cli("--json", "agents").stdout)
    assert {a["agent_id"]: a["lost"] for a in ps} == {h.agent_id: False for h in fl.hosts}, ps
    # the state stays on the first node: each bucket one copy there, as `status` says
    tags = {b["bucket"]: b for b in json.loads(h1.cli("--json", "status").stdout)["buckets"]}[subjects.KV_TAGS]
    assert (tags["replicas"], tags["peers"], tags["values"]) == (1, [h1.agent_id], 2), tags

    # removed, the host's node is cut off too: its credential was revoked with the others
    h1.cli("fleet", "remove", h3.agent_id)
    wait_for("host 3's node cut off", lambda: not _relays(h3), timeout=15)
    assert _relays(h2)  # not host 2's
