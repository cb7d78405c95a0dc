"""A complete, one-pass read of a KV bucket: every live key with its value and revision.

The mark phase must never see a partial registry: a missing manifest link would make its
blobs garbage. `TypedKV.keys` ends at nats-py's "no more pending" marker, which nats-py can
queue before the first entry when the server delivers everything before the watch is set
up (an empty listing of a full bucket). Here completion is read from each message's own
`num_pending` and emptiness from the server's consumer state, and values come in the same
pass (no get per key, which also makes a 10,000-manifest snapshot fast). The scan's consumer
is deleted when it ends, however it ends (`shared.jsconsumer`).
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import api

from shared import codec, jsconsumer
from shared.errors import Unavailable

T = TypeVar("T")
_DELETED = ("DEL", "PURGE")


async def scan(nc: NATS, bucket: str, typ: type[T], *, prefix: str = "", timeout: float = 60.0
               ) -> list[tuple[str, T, int]]:
    """(key, value, revision) of every live key (under `prefix`, a key prefix ending in '.');
    undecodable values are skipped."""
    js = nc.jetstream()
    subject_prefix = f"$KV.{bucket}."
    dec = codec.decoder(typ)
    found: dict[str, tuple[Any, int] | None] = {}
    done = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Any) -> None:
        meta = msg.metadata
        key = msg.subject[len(subject_prefix):]
        op = (msg.headers or {}).get("KV-Operation")
        if op in _DELETED or (msg.headers or {}).get("Nats-Marker-Reason"):
            found[key] = None
        else:
            try:
                found[key] = (dec.decode(msg.data), meta.sequence.stream)
            except (msgspec.DecodeError, msgspec.ValidationError):
                found[key] = None
        if meta.num_pending == 0 and not done.done():
            done.set_result(True)

    try:
        sub = await jsconsumer.created(js.subscribe(
            f"{subject_prefix}{prefix}>", stream=f"KV_{bucket}", cb=on_msg, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=jsconsumer.INACTIVE_THRESHOLD))
    except nats.js.errors.NotFoundError:
        return []  # no bucket: nothing stored yet
    except nats.errors.Error as e:
        raise Unavailable(f"reading KV {bucket}: {e}") from e
    try:
        info = await sub.consumer_info()
        if info.num_pending == 0 and (info.delivered is None or not info.delivered.consumer_seq):
            return []
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError as e:
        raise Unavailable(f"reading KV {bucket}: incomplete after {timeout:g}s") from e
    except nats.errors.Error as e:
        raise Unavailable(f"reading KV {bucket}: {e}") from e
    finally:
        await jsconsumer.release(sub)
    return [(k, v[0], v[1]) for k, v in sorted(found.items()) if v is not None]
