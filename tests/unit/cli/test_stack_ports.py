"""Ports `dockyard up` binds: the one asked for, or a free one the kernel picks when a default
is taken; a restarted nats-server keeps its port and its JetStream state."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from services.cli.stack_runner import bind_listener
from shared import bus
from shared.errors import Unavailable
from shared.natsserver import EmbeddedNats


@pytest.fixture
def taken():
    """A port some other program listens on, for as long as the test runs."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s.getsockname()[1]


def test_a_taken_port_is_refused_when_asked_for_by_name(taken):
    with pytest.raises(Unavailable, match=f"127.0.0.1:{taken}"):
        bind_listener(f"127.0.0.1:{taken}", fallback=False)


def test_a_taken_default_becomes_a_free_port_that_listens(taken):
    sock, addr = bind_listener(f"127.0.0.1:{taken}", fallback=True)
    with sock:
        host, port = addr.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) == sock.getsockname()[1] != taken
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
            pass


def test_port_zero_is_read_back():
    sock, addr = bind_listener("127.0.0.1:0", fallback=False)
    with sock:
        assert addr == f"127.0.0.1:{sock.getsockname()[1]}" and sock.getsockname()[1] != 0


def test_nats_on_a_taken_port(tmp_path, taken):
    with pytest.raises(Unavailable, match="taken"):
        EmbeddedNats(tmp_path / "a", port=taken).start()
    with EmbeddedNats(tmp_path / "b", port=taken, fallback=True) as srv:
        assert srv.port not in (0, taken)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c:
            assert c.recv(4) == b"INFO"


async def test_nats_restarted_after_kill_keeps_port_and_jetstream_state(tmp_path):
    srv = EmbeddedNats(tmp_path / "nats").start()
    try:
        port = srv.port
        nc = await bus.connect(srv.url, name="test")
        kv = await nc.jetstream().create_key_value(bucket="dyst_kept")
        await kv.put("tag", b"sha256:1")
        await nc.drain()

        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        assert not srv.running
        srv.start()
        assert srv.port == port and srv.running

        nc = await bus.connect(srv.url, name="test")
        kv = await nc.jetstream().key_value("dyst_kept")
        assert (await kv.get("tag")).value == b"sha256:1"
        await nc.drain()
    finally:
        srv.stop()
