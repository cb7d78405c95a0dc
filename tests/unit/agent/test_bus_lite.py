"""shared.bus_lite (the CLI's lean NATS client) against a real nats-server and real BusServices."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import msgspec
import pytest

from shared import bus, bus_lite
from shared.errors import InvalidArgument, NotFound, Unauthenticated, Unavailable
from shared.messages.common import Progress
from shared.natsserver import find_binary
from tests.support.ports import address_from_log, refusing_port


class Echo(msgspec.Struct, kw_only=True):
    text: str = ""
    progress_inbox: str = ""


class Reply(msgspec.Struct, kw_only=True):
    text: str
    n: int = 0


class Beat(msgspec.Struct, kw_only=True):
    host: str
    n: int


async def _interest(lite, subject: str, present: bool) -> None:
    """Wait until the server's view of `subject` has settled: nats-server 2.15 updates
    interest asynchronously (seen with nats-py on both ends too), even after a flush."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            await lite.nc.request(subject, b"", timeout=0.05)
            seen = True  # someone answered
        except Unavailable as e:
            seen = "no service answers" not in e.message
        if seen == present:
            return
    raise AssertionError(f"interest in {subject} never became {present}")


@pytest.fixture
async def lite(nats_url):
    client = await bus_lite.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
async def echo_service(nc, lite):
    """A real shared.bus.BusService with typed endpoints, errors and progress."""
    svc = bus.BusService(nc, "dyrl-echo")

    async def echo(req: Echo) -> Reply:
        return Reply(text=req.text, n=len(req.text))

    async def fail(req: Echo) -> Reply:
        raise NotFound(f"no such thing: {req.text}", detail_code="THING_UNKNOWN")

    async def slow(req: Echo) -> Reply:
        for i in range(3):
            await bus.publish_progress(nc, req.progress_inbox, Progress(kind="step", step=i + 1, total_steps=3,
                                                                         message=f"step {i + 1}"))
        return Reply(text="done")

    svc.endpoint("dyrl.echo", Echo, echo, max_bytes=None)  # the big-payload test goes to the server limit
    svc.endpoint("dyrl.fail", Echo, fail)
    svc.endpoint("dyrl.slow", Echo, slow)
    await svc.start()
    for subject in ("dyrl.echo", "dyrl.fail", "dyrl.slow"):
        await _interest(lite, subject, True)
    yield svc
    await svc.stop()


async def test_request_reply_through_a_bus_service(lite, echo_service):
    got = await lite.request("dyrl.echo", Echo(text="héllo"), Reply, timeout=2)
    assert got == Reply(text="héllo", n=5)


async def test_error_replies_become_the_typed_error(lite, echo_service):
    with pytest.raises(NotFound) as e:
        await lite.request("dyrl.fail", Echo(text="x"), Reply, timeout=2)
    assert e.value.message == "no such thing: x"
    assert e.value.detail_code == "THING_UNKNOWN"


async def test_no_responders_is_unavailable_at_once(lite):
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="no service answers on dyrl.nobody"):
        await lite.request("dyrl.nobody", Echo(), Reply, timeout=5)
    assert time.monotonic() - t0 < 1


async def test_a_silent_responder_times_out(lite, nc):
    sub = await nc.subscribe("dyrl.silent")  # listens, never answers
    await _interest(lite, "dyrl.silent", True)
    try:
        with pytest.raises(Unavailable, match="within 0.2s"):
            await lite.request("dyrl.silent", Echo(), Reply, timeout=0.2)
    finally:
        await sub.unsubscribe()


async def test_progress_arrives_in_order_before_the_reply(lite, echo_service):
    seen: list[str] = []
    got = await lite.request_with_progress("dyrl.slow", Echo(), Reply, lambda p: seen.append(p.message), timeout=2)
    assert got.text == "done"
    assert seen == ["step 1", "step 2", "step 3"]


async def test_gather_hears_every_responder(lite, nc):
    async def responder(name: str):
        async def cb(m):
            await m.respond(msgspec.json.encode(Reply(text=name)))
        return await nc.subscribe("dyrl.all.ps", cb=cb)

    subs = [await responder("a"), await responder("b")]
    await _interest(lite, "dyrl.all.ps", True)
    try:
        t0 = time.monotonic()
        got = await lite.gather("dyrl.all.ps", Echo(), Reply, timeout=3, expect=2)
        assert sorted(r.text for r in got) == ["a", "b"]
        assert time.monotonic() - t0 < 1  # `expect` ends the wait
        got = await lite.gather("dyrl.all.ps", None, Reply, timeout=0.3)
        assert len(got) == 2
    finally:
        for s in subs:
            await s.unsubscribe()
    await _interest(lite, "dyrl.all.ps", False)
    t0 = time.monotonic()
    assert await lite.gather("dyrl.all.ps", Echo(), Reply, timeout=3) == []
    assert time.monotonic() - t0 < 1  # no responders: the server says so


async def test_subscribe_and_publish(lite, nc):
    got: list[Beat] = []
    ready = asyncio.Event()

    async def read():
        async for b in lite.subscribe("dyrl.events", Beat):
            if b.n == 0:  # a probe: the subscription is in place
                ready.set()
                continue
            got.append(b)
            if len(got) == 2:
                return

    task = asyncio.create_task(read())
    while not ready.is_set():  # the server takes the SUB in asynchronously
        await lite.publish("dyrl.events", Beat(host="probe", n=0))
        await asyncio.sleep(0.02)
    await lite.publish("dyrl.events", Beat(host="h", n=1))
    await nc.publish("dyrl.events", msgspec.json.encode(Beat(host="h", n=2)))
    await asyncio.wait_for(task, 2)
    # Two connections: the server keeps each one's order, not an order between them.
    assert sorted(got, key=lambda b: b.n) == [Beat(host="h", n=1), Beat(host="h", n=2)]


async def test_big_payloads_both_ways(lite, echo_service):
    text = "x" * (900 * 1024)
    got = await lite.request("dyrl.echo", Echo(text=text), Reply, timeout=5)
    assert got.n == len(text) and got.text == text
    with pytest.raises(InvalidArgument, match="over the server's limit"):
        await lite.request("dyrl.echo", Echo(text="y" * (2 << 20)), Reply, timeout=5)


async def test_a_raw_payload_with_headers_reaches_nats_py_as_sent(lite, nc):
    got = asyncio.get_running_loop().create_future()

    async def cb(msg) -> None:
        if msg.headers and not got.done():  # (not _interest's probes)
            got.set_result(msg)
            await nc.publish(msg.reply, b"ack", headers={"Dockyard-Seq": msg.headers["Dockyard-Seq"]})

    sub = await nc.subscribe("dyrl.raw", cb=cb)
    await _interest(lite, "dyrl.raw", True)
    data = bytes(range(256)) * 2048  # 512 KiB, every byte value: no encoding on the way
    inbox = lite.nc.new_inbox()
    answers = await lite.nc.subscribe(inbox)
    await lite.nc.publish("dyrl.raw", data, reply=inbox, headers={"Dockyard-Seq": "3", "Dockyard-End": "1"})
    msg = await asyncio.wait_for(got, 5)
    assert msg.data == data and msg.headers == {"Dockyard-Seq": "3", "Dockyard-End": "1"}
    answer = await answers.next_msg(5)
    assert (answer.data, answer.headers) == (b"ack", {"Dockyard-Seq": "3"})
    await sub.unsubscribe()


async def test_kv_entries_read_the_live_keys(lite, nc):
    kv = await bus.TypedKV.open(nc, "dyrl-lite-kv", Beat)
    try:
        await kv.put("a", Beat(host="a", n=1))
        await kv.put("a", Beat(host="a", n=2))  # only the last value counts
        await kv.put("b", Beat(host="b", n=1))
        await kv.put("c", Beat(host="c", n=1))
        await kv.delete("c")
        got = await lite.kv_entries("dyrl-lite-kv")
        assert [(k, msgspec.json.decode(v, type=Beat).n) for k, v in got] == [("a", 2), ("b", 1)]
    finally:
        await nc.jetstream().delete_key_value("dyrl-lite-kv")
    assert await lite.kv_entries("dyrl-lite-kv") == []  # no bucket


async def test_url_credentials_and_refusals(tmp_path):
    log = tmp_path / "nats.log"
    srv = subprocess.Popen([find_binary(), "-a", "127.0.0.1", "-p", "-1", "--user", "dy", "--pass", "s3cr%t"],
                           stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        port = address_from_log(log, r"Listening for client connections on \S+:(\d+)", srv)
        deadline = time.monotonic() + 5
        while True:
            try:
                c = await bus_lite.connect(f"nats://dy:s3cr%25t@127.0.0.1:{port}", connect_timeout=1)
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        await c.nc.flush()
        await c.close()
        with pytest.raises(Unauthenticated, match="Authorization Violation"):
            await bus_lite.connect(f"nats://dy:wrong@127.0.0.1:{port}", connect_timeout=1)
    finally:
        srv.terminate()
        srv.wait(5)
    with refusing_port() as dead, pytest.raises(Unavailable, match="cannot reach NATS"):
        await bus_lite.connect(f"nats://127.0.0.1:{dead}", connect_timeout=1)
    with pytest.raises(bus_lite.NeedFullClient):
        await bus_lite.connect("tls://127.0.0.1:4222")


def test_the_cli_path_does_not_import_nats_py(nats_url):
    code = ("import asyncio, sys\n"
            "from shared.config import load\n"
            "from services.cli.context import CliContext\n"
            "async def main():\n"
            "    ctx = CliContext(load(nats_url=sys.argv[1]))\n"
            "    b = await ctx.bus()\n"
            "    await b.nc.flush()\n"
            "    await ctx.close()\n"
            "    print(type(b).__name__, 'nats' in sys.modules, 'shared.bus' in sys.modules)\n"
            "asyncio.run(main())\n")
    out = subprocess.run([sys.executable, "-c", code, nats_url], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["LiteBusClient", "False", "False"], out.stderr


def test_parse_url():
    assert bus_lite.parse_url("nats://127.0.0.1:4222") == [("127.0.0.1", 4222, {})]
    assert bus_lite.parse_url("nats://u:p%40ss@h:1") == [("h", 1, {"user": "u", "pass": "p@ss"})]
    assert bus_lite.parse_url("nats://tok@h") == [("h", 4222, {"auth_token": "tok"})]
    assert bus_lite.parse_url("h:5, nats://[::1]:6") == [("h", 5, {}), ("::1", 6, {})]
    with pytest.raises(InvalidArgument):
        bus_lite.parse_url("nats://h:port")
    for url in ("tls://h:4222", "ws://h:80", "wss://h"):
        with pytest.raises(bus_lite.NeedFullClient):
            bus_lite.parse_url(url)
