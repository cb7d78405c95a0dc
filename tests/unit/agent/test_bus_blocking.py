"""shared.bus_blocking (the loopless connection of `dockyard ps`) against a real nats-server
and real BusServices. The blocking calls run in a thread: the services answer on the
test's event loop, which a blocking socket read would otherwise stall."""

from __future__ import annotations

import asyncio
import subprocess
import time

import msgspec
import pytest

from shared import bus, bus_blocking
from shared.bus_blocking import NeedsEventLoop, drive
from shared.errors import InvalidArgument, NotFound, Unauthenticated, Unavailable
from shared.natsserver import find_binary
from shared.nats_wire import NeedFullClient
from tests.support.ports import address_from_log, refusing_port


class Echo(msgspec.Struct, kw_only=True):
    text: str = ""


class Reply(msgspec.Struct, kw_only=True):
    text: str
    n: int = 0


def blocking(coro):
    """Drive a bus_blocking coroutine in a thread, leaving the test's loop free to answer."""
    return asyncio.to_thread(drive, coro)


@pytest.fixture
async def client(nats_url):
    c = await blocking(bus_blocking.connect(nats_url))
    yield c
    await blocking(c.close())


async def _until_answered(client, subject: str) -> None:
    """The server takes a new subscription's interest in asynchronously."""
    deadline = time.monotonic() + 5
    while True:
        try:
            await blocking(client.nc.request(subject, b"", timeout=0.2))
            return
        except Unavailable:
            if time.monotonic() > deadline:
                raise
        except NotFound:
            return  # an error reply is an answer


@pytest.fixture
async def echo_service(nc, client):
    svc = bus.BusService(nc, "dybl-echo")

    async def echo(req: Echo) -> Reply:
        return Reply(text=req.text, n=len(req.text))

    async def fail(req: Echo) -> Reply:
        raise NotFound(f"no such thing: {req.text}", detail_code="THING_UNKNOWN")

    svc.endpoint("dybl.echo", Echo, echo, max_bytes=None)
    svc.endpoint("dybl.fail", Echo, fail)
    await svc.start()
    for subject in ("dybl.echo", "dybl.fail"):
        await _until_answered(client, subject)
    yield svc
    await svc.stop()


async def test_request_reply_and_typed_errors(client, echo_service):
    assert await blocking(client.request("dybl.echo", Echo(text="héllo"), Reply, timeout=2)) == Reply(text="héllo", n=5)
    text = "x" * (900 * 1024)  # several socket reads for one message
    assert (await blocking(client.request("dybl.echo", Echo(text=text), Reply, timeout=5))).n == len(text)
    with pytest.raises(NotFound) as e:
        await blocking(client.request("dybl.fail", Echo(text="x"), Reply, timeout=2))
    assert (e.value.message, e.value.detail_code) == ("no such thing: x", "THING_UNKNOWN")
    with pytest.raises(InvalidArgument, match="over the server's limit"):
        await blocking(client.request("dybl.echo", Echo(text="y" * (2 << 20)), Reply, timeout=5))


async def test_no_responders_and_a_silent_responder(client, nc):
    with pytest.raises(Unavailable, match="no service answers on dybl.nobody"):
        await blocking(client.request("dybl.nobody", Echo(), Reply, timeout=5))
    sub = await nc.subscribe("dybl.silent")  # listens, never answers
    try:
        deadline = time.monotonic() + 5
        while True:  # until the server routes to it: then the wait is the timeout's
            try:
                await blocking(client.request("dybl.silent", Echo(), Reply, timeout=0.3))
            except Unavailable as e:
                if "within 0.3s" in e.message:
                    break
                assert time.monotonic() < deadline, e.message
    finally:
        await sub.unsubscribe()


async def test_gather_hears_every_responder(client, nc):
    async def responder(name: str):
        async def cb(m):
            await m.respond(msgspec.json.encode(Reply(text=name)))
        return await nc.subscribe("dybl.all.ps", cb=cb)

    subs = [await responder("a"), await responder("b")]
    await nc.flush()
    try:
        deadline = time.monotonic() + 5
        while True:
            got = await blocking(client.gather("dybl.all.ps", Echo(), Reply, timeout=1, expect=2))
            if len(got) == 2 or time.monotonic() > deadline:
                break
        assert sorted(r.text for r in got) == ["a", "b"]
    finally:
        for s in subs:
            await s.unsubscribe()


async def test_kv_entries_read_the_live_keys(client, nc):
    kv = await bus.TypedKV.open(nc, "dybl-kv", Reply)
    try:
        await kv.put("a", Reply(text="a", n=1))
        await kv.put("a", Reply(text="a", n=2))  # only the last value counts
        await kv.put("b", Reply(text="b", n=1))
        await kv.put("c", Reply(text="c", n=1))
        await kv.delete("c")
        got = await blocking(client.kv_entries("dybl-kv"))
        assert [(k, msgspec.json.decode(v, type=Reply).n) for k, v in got] == [("a", 2), ("b", 1)]
    finally:
        await nc.jetstream().delete_key_value("dybl-kv")
    assert await blocking(client.kv_entries("dybl-kv")) == []  # no bucket


def test_url_credentials_and_refusals(tmp_path):
    log = tmp_path / "nats.log"
    srv = subprocess.Popen([find_binary(), "-a", "127.0.0.1", "-p", "-1", "--user", "dy", "--pass", "s3cr%t"],
                           stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        port = address_from_log(log, r"Listening for client connections on \S+:(\d+)", srv)
        deadline = time.monotonic() + 5
        while True:
            try:
                c = drive(bus_blocking.connect(f"nats://dy:s3cr%25t@127.0.0.1:{port}", connect_timeout=1))
                break
            except Unavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        drive(c.nc.flush())
        drive(c.close())
        with pytest.raises(Unauthenticated, match="Authorization Violation"):
            drive(bus_blocking.connect(f"nats://dy:wrong@127.0.0.1:{port}", connect_timeout=1))
    finally:
        srv.terminate()
        srv.wait(5)
    with refusing_port() as dead, pytest.raises(Unavailable, match="cannot reach NATS"):
        drive(bus_blocking.connect(f"nats://127.0.0.1:{dead}", connect_timeout=1))
    with pytest.raises(NeedFullClient):
        drive(bus_blocking.connect("tls://127.0.0.1:4222"))


def test_drive_refuses_what_needs_an_event_loop():
    async def sleeps():
        await asyncio.sleep(0)
        return "never"

    with pytest.raises(NeedsEventLoop):
        drive(sleeps())

    async def plain():
        return 42

    assert drive(plain()) == 42
