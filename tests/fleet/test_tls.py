"""The bus between hosts is TLS: off loopback a plain client is refused, a client that does not
trust the fleet CA is refused, and one that does gets through (both nats-py and bus_lite)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl

import msgspec
import pytest

from shared import bus, bus_lite, credentials, fleet as fleetmsg, tls
from shared.errors import Unauthenticated, Unavailable

pytestmark = pytest.mark.root


def _plain_connect(addr: str, port: int) -> tuple[dict, bytes]:
    """INFO, then CONNECT and PING in the clear: what the server answers to that."""
    with socket.create_connection((addr, port), timeout=10) as s:
        f = s.makefile("rb")
        info = json.loads(f.readline().split(b" ", 1)[1])
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        try:
            rest = f.read(4096)  # the server closes the connection
        except (ConnectionResetError, socket.timeout):
            rest = b""
        return info, rest


def test_off_loopback_the_bus_demands_tls_from_the_fleet_ca(make_fleet, tmp_path):
    fl = make_fleet(2)
    h1, h2 = fl.hosts
    h1.up("--listen", h1.addr, "--nats-port", "4222", "--registry-addr", f"{h1.addr}:5000")
    cdir = h1.data_dir / "credentials"
    admin = str(cdir / "admin.creds")

    info, rest = _plain_connect(h1.addr, 4222)
    assert info["tls_required"] is True
    assert b"PONG" not in rest

    async def probe():
        # bus_lite without a CA cannot speak TLS at all; nats-py without the fleet CA fails verification
        with pytest.raises(bus_lite.NeedFullClient):
            await bus_lite.connect(f"nats://{h1.addr}:4222", creds=admin)
        other = tmp_path / "other"
        other.mkdir()
        tls.ensure_ca(other)
        for ca in (str(other / tls.CA_FILE), ssl.create_default_context()):
            with pytest.raises((Unavailable, Unauthenticated)):
                await bus.connect(f"nats://{h1.addr}:4222", creds=admin, ca=ca, connect_timeout=3)
        # with the fleet CA both clients get through and are answered
        lite = await bus_lite.connect(f"nats://{h1.addr}:4222", creds=admin, ca=str(cdir / tls.CA_FILE))
        await lite.nc.drain()
        nc = await bus.connect(f"nats://{h1.addr}:4222", creds=admin, ca=str(cdir / tls.CA_FILE))
        assert nc.is_connected
        await nc.drain()

    asyncio.run(probe())
    # the CLI (bus_lite over TLS) on the first node
    assert h1.cli("status").returncode == 0

    # a token's pin that is not this fleet's CA: the joiner refuses before sending the secret
    tok = fleetmsg.decode_token(h1.cli("fleet", "token").stdout.strip())
    wrong = fleetmsg.encode_token(msgspec.structs.replace(tok, ca=tls.fingerprint((other_ca := (
        tmp_path / "other" / tls.CA_FILE)).read_bytes())))
    p = h2.run_up("--join", h1.addr, "--token", wrong, "--listen", h2.addr, "--services", "runtime-agent")
    assert p.returncode != 0 and "not the one the join token pins" in p.stderr, p.stderr
    assert other_ca.exists()
    # the refused join left the token unused: the right pin joins with it
    h2.up("--join", h1.addr, "--token", fleetmsg.encode_token(tok), "--listen", h2.addr,
          "--services", "runtime-agent")
    assert tls.fingerprint((h2.data_dir / "credentials" / tls.CA_FILE).read_bytes()) == tok.ca
    assert (h2.data_dir / "credentials" / tls.NODE_CERT_FILE).exists()
    assert credentials.read_creds(next((h2.data_dir / "credentials").glob("runtime-agent*.creds")))
