"""The agent's per-container locks exclude each other and are forgotten with their last user."""

from __future__ import annotations

import asyncio

from services.runtime_agent.containers.locks import KeyedLocks


async def test_a_key_is_held_by_one_at_a_time_and_forgotten_after():
    locks = KeyedLocks()
    inside, most = 0, 0

    async def user(key: str) -> None:
        nonlocal inside, most
        async with locks(key):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(user("a") for _ in range(20)))
    assert most == 1
    assert len(locks) == 0


async def test_many_containers_leave_no_entry_behind():
    locks = KeyedLocks()
    for i in range(1000):
        async with locks(f"{i:064x}"):
            assert len(locks) == 1
    assert len(locks) == 0


async def test_a_waiter_keeps_the_entry_and_a_failure_releases_it():
    locks = KeyedLocks()
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks("c"):
            held.set()
            await release.wait()
            raise RuntimeError("boom")

    t = asyncio.create_task(holder())
    await held.wait()
    waiter = asyncio.create_task(_take(locks, "c"))
    await asyncio.sleep(0.01)
    assert len(locks) == 1 and not waiter.done()
    release.set()
    await asyncio.gather(t, return_exceptions=True)
    await waiter
    assert len(locks) == 0


async def _take(locks: KeyedLocks, key: str) -> None:
    async with locks(key):
        pass
