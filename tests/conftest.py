"""Fixtures every test may use: a real nats-server with JetStream."""

from __future__ import annotations

import pytest

from shared import bus
from shared.natsserver import EmbeddedNats


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """One real nats-server (JetStream on) for the whole session, on a free port."""
    srv = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url):
    conn = await bus.connect(nats_url, name="test")
    yield conn
    await conn.drain()
