"""`up` waits for the service process it started, not for any instance of that service on the bus."""

from __future__ import annotations

import msgspec

from services.cli.stack_runner import instance_answers
from shared import bus


class Nothing(msgspec.Struct):
    pass


async def _service(nc, monkeypatch, instance: str) -> bus.BusService:
    monkeypatch.setenv(bus.INSTANCE_ENV, instance)
    svc = bus.BusService(nc, "ready-svc")

    async def noop(req: Nothing) -> Nothing:
        return req

    svc.endpoint("test.ready.noop", Nothing, noop)
    await svc.start()
    return svc


async def test_only_the_instance_started_counts_as_ready(nc, monkeypatch):
    assert not await instance_answers(nc, "ready-svc", "ours")  # nobody at all
    other = await _service(nc, monkeypatch, "another-hosts")
    try:
        assert not await instance_answers(nc, "ready-svc", "ours")  # another host's instance answers
        ours = await _service(nc, monkeypatch, "ours")
        try:
            assert await instance_answers(nc, "ready-svc", "ours")
            assert await instance_answers(nc, "ready-svc", "another-hosts")
        finally:
            await ours.stop()
    finally:
        await other.stop()
