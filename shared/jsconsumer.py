"""Ephemeral JetStream consumers that are deleted when their reader is done.

nats-py's `unsubscribe` (and `KeyWatcher.stop`) leave the consumer on the server until its
inactive threshold passes: five minutes for nats-py's KV watchers. One listing per request
then piles consumers onto a stream until nats-server 2.15's default of 1000 per stream
(`default_max_consumers`) refuses every new one with "maximum consumers limit reached".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors

log = logging.getLogger("dockyard.jsconsumer")

# The server's own clean-up of a consumer nobody deleted (the client died, the delete failed,
# or nats-py re-created an ordered consumer behind our back). Interest exists for as long as
# the reader reads, so this bounds only the leftovers.
INACTIVE_THRESHOLD = 5.0

T = TypeVar("T")
_releasing: set[asyncio.Future] = set()


async def created(make: Awaitable[T], sub_of: Callable[[T], Any] = lambda s: s) -> T:
    """Await what makes a consumer and its subscription (`sub_of` finds it in the result).

    A caller cancelled meanwhile does not stop the server from creating the consumer: it is
    released as soon as it exists.
    """
    task = asyncio.ensure_future(make)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda t: _release_later(t, sub_of))
        _track(task)
        raise


def _release_later(task: asyncio.Future, sub_of: Callable[[Any], Any]) -> None:
    if not task.cancelled() and task.exception() is None:
        _track(asyncio.ensure_future(_release(sub_of(task.result()))))


def _track(task: asyncio.Future) -> asyncio.Future:
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)
    return task


async def release(sub: Any) -> None:
    """Unsubscribe a JetStream push subscription and delete its consumer.

    Runs to the end even when the caller is being cancelled: it is called from `finally`.
    """
    await asyncio.shield(_track(asyncio.ensure_future(_release(sub))))


async def settle() -> None:
    """Wait for the releases still under way (those of cancelled readers), e.g. before a close."""
    while _releasing:
        await asyncio.gather(*_releasing, return_exceptions=True)


async def _release(sub: Any) -> None:
    try:
        await sub.unsubscribe()
    except nats.errors.Error:
        pass  # a closed connection: the server drops the interest with it
    try:
        await sub._js.delete_consumer(sub._stream, sub._consumer)
    except nats.js.errors.NotFoundError:
        pass
    except nats.errors.Error as e:  # INACTIVE_THRESHOLD removes it instead
        log.debug("could not delete consumer %s on %s: %s", sub._consumer, sub._stream, e)
