"""Flow control of a session (services/runtime_agent/interactive): a real nats-server, a real
process writing as fast as it can, a client that stops acking."""

from __future__ import annotations

import asyncio
import subprocess

import msgspec

from services.runtime_agent.interactive.pump import ProcessIO
from services.runtime_agent.interactive.session import Session
from shared import codec
from shared.messages.interactive import WINDOW_MIN, AttachSpec, Frame

READ = 64 << 10  # the pump's read size: the most it holds beyond a session's queue


async def _settled(read) -> int:
    """What `read()` returns once it stops growing."""
    last = -1
    while (now := read()) != last:
        last = now
        await asyncio.sleep(0.3)
    return now


async def test_a_client_that_stops_acking_stops_the_process_not_the_agent_s_memory(nc):
    io = ProcessIO(tty=False, stdin=False)
    got = bytearray()
    dec = codec.decoder(Frame)

    async def on_frame(msg):
        f = dec.decode(msg.data)
        assert f.kind == "out" and f.offset == len(got) + len(f.data)
        got.extend(f.data)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_frame)
    s = Session(nc, AttachSpec(session="a" * 32, inbox=inbox, window=WINDOW_MIN))
    io.attach(s)
    in_r, out_w, err_w = io.make_pipes()
    proc = subprocess.Popen(["sh", "-c", "head -c 5000000 /dev/zero"], stdin=in_r, stdout=out_w, stderr=err_w)
    io.started()
    try:
        received = await _settled(lambda: len(got))
        # No ack: one window on the wire, at most one window (and one read) queued, and the
        # writer blocked in the kernel's pipe, not done.
        assert received == WINDOW_MIN
        assert s.queued <= WINDOW_MIN + READ
        assert proc.poll() is None
        # Acks let it all through, in order and complete.
        async def acker():
            while proc.poll() is None or len(got) < 5_000_000:
                s.ack(len(got))
                await asyncio.sleep(0.002)
        await asyncio.wait_for(acker(), 120)
        assert bytes(got) == b"\0" * 5_000_000
        assert await asyncio.to_thread(proc.wait, 10) == 0
        await io.finish(0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        io.close()
        await sub.unsubscribe()


async def test_input_is_written_in_order_and_answered_once_written(nc):
    io = ProcessIO(tty=False, stdin=True)
    in_r, out_w, err_w = io.make_pipes()
    proc = subprocess.Popen(["cat"], stdin=in_r, stdout=out_w, stderr=err_w)
    io.started()
    log = bytearray()
    inbox = nc.new_inbox()

    async def on_frame(m):
        log.extend(codec.decode(m.data, Frame).data)

    sub = await nc.subscribe(inbox, cb=on_frame)
    s = Session(nc, AttachSpec(session="b" * 32, inbox=inbox))
    io.attach(s)
    answered = []
    try:
        chunks = [bytes([i]) * 1000 for i in range(50)]
        for i, c in enumerate(chunks):
            async def reply(err, i=i):
                answered.append((i, err))
            io.feed(c, reply)
        io.feed_eof(None)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        await io.finish(0)
        assert [i for i, _ in answered] == list(range(50)) and all(e is None for _, e in answered)
        # published before finish returned; they reach our subscription a round trip later
        await nc.flush()
        async def all_there():
            while len(log) < 50_000:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(all_there(), 20)
        assert bytes(log) == b"".join(chunks)
    finally:
        if proc.poll() is None:
            proc.kill()
        io.close()
        await sub.unsubscribe()


def test_frames_carry_bytes_exactly():
    data = bytes(range(256)) * 3
    f = codec.decode(codec.encode(Frame(kind="out", stream=2, data=data, offset=9)), Frame)
    assert (f.data, f.stream, f.offset) == (data, 2, 9)
    assert isinstance(msgspec.json.decode(codec.encode(f))["data"], str)  # base64 in the JSON
