"""The bus between hosts is TLS (a plain client, or one that does not trust the fleet CA, is
refused; one that does gets through, nats-py and bus_lite alike), and join tokens that must
not work do not: a wrong CA pin, used, expired, a forged secret, a forged credential."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time

import msgspec
import pytest

from shared import bus, bus_blocking, bus_lite, credentials, fleet as fleetmsg, tls
from shared.nats_wire import NeedFullClient
from shared.errors import Unauthenticated, Unavailable
from shared.permissions import joiner

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


def test_the_bus_off_loopback_is_tls_from_the_fleet_ca_and_bad_tokens_are_refused(make_fleet, tmp_path):
    fl = make_fleet(3)
    h1, h2, h3 = fl.hosts
    h1.up("--listen", h1.addr, "--nats-port", "4222", "--registry-addr", f"{h1.addr}:5000")
    cdir = h1.data_dir / "credentials"
    admin = str(cdir / "admin.creds")
    other = credentials.credentials_dir(tmp_path / "other")  # keys and a CA of another installation
    tls.ensure_ca(other)

    info, rest = _plain_connect(h1.addr, 4222)
    assert info["tls_required"] is True
    assert b"PONG" not in rest

    async def probe():
        # bus_lite without a CA cannot speak TLS at all; nats-py without the fleet CA fails verification
        with pytest.raises(bus_lite.NeedFullClient):
            await bus_lite.connect(f"nats://{h1.addr}:4222", creds=admin)
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
    assert h1.cli("status").returncode == 0  # the CLI (bus_lite over TLS) on the first node
    # cli11: the loopless connection of `ps` verifies the same way
    drive = bus_blocking.drive
    with pytest.raises(NeedFullClient):
        drive(bus_blocking.connect(f"nats://{h1.addr}:4222", creds=admin))
    with pytest.raises(Unavailable):
        drive(bus_blocking.connect(f"nats://{h1.addr}:4222", creds=admin, ca=str(other / tls.CA_FILE)))
    c = drive(bus_blocking.connect(f"nats://{h1.addr}:4222", creds=admin, ca=str(cdir / tls.CA_FILE)))
    drive(c.nc.flush())
    drive(c.close())
    assert "CONTAINER ID" in h1.cli("ps").stdout

    join = ("--join", h1.addr, "--listen", h2.addr, "--services", "runtime-agent")
    tok = fleetmsg.decode_token(h1.cli("fleet", "token").stdout.strip())
    # a pin that is not this fleet's CA: the joiner refuses before it sends the secret
    wrong = fleetmsg.encode_token(msgspec.structs.replace(tok, ca=tls.fingerprint((other / tls.CA_FILE).read_bytes())))
    p = h2.run_up(*join, "--token", wrong)
    assert p.returncode != 0 and "not the one the join token pins" in p.stderr, p.stderr
    # the refused join left the token unused: with the right pin it joins
    h2.up(*join, "--token", fleetmsg.encode_token(tok))
    assert tls.fingerprint((h2.data_dir / "credentials" / tls.CA_FILE).read_bytes()) == tok.ca
    assert (h2.data_dir / "credentials" / tls.NODE_CERT_FILE).exists()

    join3 = ("--join", h1.addr, "--listen", h3.addr, "--services", "runtime-agent")
    p = h3.run_up(*join3, "--token", fleetmsg.encode_token(tok))
    assert p.returncode != 0 and "already used" in p.stderr, p.stderr

    expired = h1.cli("fleet", "token", "--ttl", "1s").stdout.strip()
    time.sleep(1.2)
    p = h3.run_up(*join3, "--token", expired)
    assert p.returncode != 0 and "expired" in p.stderr, p.stderr

    fresh = fleetmsg.decode_token(h1.cli("fleet", "token").stdout.strip())
    # a valid joiner credential with a secret nobody issued
    p = h3.run_up(*join3, "--token", fleetmsg.encode_token(msgspec.structs.replace(fresh, secret="x" * 43)))
    assert p.returncode != 0 and "not one this fleet issued" in p.stderr, p.stderr
    # a joiner credential signed by keys that are not the fleet's
    fake = credentials.read_creds_text(credentials.Authority(other).issue("joiner-x", joiner("x"), expires=fresh.exp))
    p = h3.run_up(*join3, "--token", fleetmsg.encode_token(msgspec.structs.replace(fresh, jwt=fake.jwt, seed=fake.seed)))
    assert p.returncode != 0 and "refused the join token" in p.stderr, p.stderr
    # none of that spent the fresh token
    h3.up(*join3, "--token", fleetmsg.encode_token(fresh))
    assert [x["host"] for x in json.loads(h1.cli("--json", "fleet", "ls").stdout)] == [
        h1.agent_id, h2.agent_id, h3.agent_id]
