"""Fixtures every test may use: a real nats-server with JetStream that demands a password."""

from __future__ import annotations

import secrets

import pytest

from shared import bus
from shared.credentials import write_secret
from shared.natsserver import EmbeddedNats


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """One real nats-server (JetStream on) for the whole session, on a free port.

    Like every dockyard server it refuses clients it cannot identify; its one user, `test`,
    may do anything (tests/security/ checks the real permission table on servers of its own).
    """
    d = tmp_path_factory.mktemp("nats")
    srv = EmbeddedNats(d / "store", config_file=d / "auth.conf")
    srv.password = secrets.token_hex(16)
    write_secret(srv.config_file, f'authorization {{ users: [{{user: test, password: "{srv.password}"}}] }}\n'.encode())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server) -> str:
    """The server's URL with the all-permissions test user in it: bus.connect(nats_url) just works."""
    return f"nats://test:{nats_server.password}@{nats_server.host}:{nats_server.port}"


@pytest.fixture
async def nc(nats_url):
    conn = await bus.connect(nats_url, name="test")
    yield conn
    await conn.drain()
