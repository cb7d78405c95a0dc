"""JetStream key-value state: buckets, reversible keys, typed values with compare-and-set.

`TypedKV` holds one msgspec Struct type per key; NATS errors become `Unavailable`,
lost races `Conflict` or `AlreadyExists` (shared/errors.py). `shared.bus` re-exports
these names, where most callers import them from.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from shared import codec, jsconsumer
from shared.errors import AlreadyExists, Conflict, DockyardError, NotFound, Unavailable

Rep = TypeVar("Rep")

_KEY_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/.")


def kv_key(*parts: str) -> str:
    """Join parts into a valid, reversible KV key (`.` separates parts; others escaped as =XX)."""
    out = []
    for p in parts:
        out.append("".join(c if c in _KEY_OK and c != "." else f"={ord(c):02X}" for c in p) or "=")
    return ".".join(out)


def kv_key_parts(key: str) -> list[str]:
    return [re.sub(r"=([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), p) if p != "=" else ""
            for p in key.split(".")]


async def kv_bucket(nc: NATS, bucket: str, *, ttl: float | None = None, history: int = 1,
                    description: str = "") -> Any:
    """Bind to a KV bucket, creating it if absent (replicas may race: either wins)."""
    js = nc.jetstream()
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    except nats.errors.Error as e:
        raise Unavailable(f"JetStream unavailable: {e}") from e
    from nats.js.api import KeyValueConfig
    try:
        return await js.create_key_value(KeyValueConfig(
            bucket=bucket, history=history, ttl=ttl, description=description or None))
    except nats.js.errors.BadRequestError:
        return await js.key_value(bucket)
    except nats.errors.Error as e:
        raise Unavailable(f"cannot create KV bucket {bucket}: {e}") from e


@contextlib.contextmanager
def _cas(op: str, key: str, lost: DockyardError) -> Iterator[None]:
    """A compare-and-set write: `lost` when another writer came first, Unavailable on any other
    NATS error (10071: JetStream's "wrong last sequence", as an APIError of its own)."""
    try:
        yield
    except nats.js.errors.KeyWrongLastSequenceError as e:
        raise lost from e
    except nats.js.errors.APIError as e:
        if getattr(e, "err_code", None) == 10071:
            raise lost from e
        raise Unavailable(f"KV {op} {key}: {e}") from e
    except nats.errors.Error as e:
        raise Unavailable(f"KV {op} {key}: {e}") from e


# Above this many candidate keys, one consumer costs less than a get per key.
_GET_EACH_MAX = 32


class TypedKV:
    """A KV bucket holding one Struct type per key, with compare-and-set writes."""

    def __init__(self, kv: Any, typ: type[Rep]):
        self.kv = kv
        self.typ = typ
        self._dec = codec.decoder(typ)

    @classmethod
    async def open(cls, nc: NATS, bucket: str, typ: type[Rep], **kw: Any) -> "TypedKV":
        return cls(await kv_bucket(nc, bucket, **kw), typ)

    async def _entry(self, key: str) -> Any:
        """The key's live entry, or None when absent or deleted."""
        try:
            e = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except nats.errors.Error as ex:
            raise Unavailable(f"KV get {key}: {ex}") from ex
        if e.value is None or e.operation in ("DEL", "PURGE"):
            return None
        return e

    async def get(self, key: str) -> tuple[Any, int] | None:
        """(value, revision), or None when absent or deleted."""
        e = await self._entry(key)
        return None if e is None else (self._dec.decode(e.value), e.revision)

    async def require(self, key: str, what: str = "key") -> tuple[Any, int]:
        got = await self.get(key)
        if got is None:
            raise NotFound(f"{what} {kv_key_parts(key)[-1]!r} not found")
        return got

    async def create(self, key: str, value: msgspec.Struct) -> int:
        with _cas("create", key, AlreadyExists(f"{key} already exists")):
            return await self.kv.create(key, codec.encode(value))

    async def update(self, key: str, value: msgspec.Struct, last: int) -> int:
        with _cas("update", key, Conflict(f"{key} changed concurrently")):
            return await self.kv.update(key, codec.encode(value), last=last)

    async def put(self, key: str, value: msgspec.Struct) -> int:
        try:
            return await self.kv.put(key, codec.encode(value))
        except nats.errors.Error as e:
            raise Unavailable(f"KV put {key}: {e}") from e

    async def delete(self, key: str, last: int | None = None) -> None:
        with _cas("delete", key, Conflict(f"{key} changed concurrently")):
            await self.kv.delete(key, last=last)

    async def keys(self, prefix: str = "") -> list[str]:
        """Live keys, optionally under `prefix` (a `kv_key` prefix ending in '.')."""
        # The subjects first (stream info, filtered by the server: nats-py's keys() reads every
        # key). Deleted keys keep their marker there, so each candidate is then checked: a get
        # each when they are few (a blob's repositories, a job's tick claims; no consumer at
        # all), else one watch.
        subject = prefix + ">"
        try:
            info = await self.kv._js.stream_info(self.kv._stream, subjects_filter=self.kv._pre + subject)
        except nats.errors.Error as e:
            raise Unavailable(f"KV keys: {e}") from e
        candidates = [s[len(self.kv._pre):] for s in info.state.subjects or {}]
        if len(candidates) > _GET_EACH_MAX:
            return await self._watch_keys(subject)
        live = await asyncio.gather(*(self._entry(k) for k in candidates))
        return sorted(k for k, e in zip(candidates, live) if e is not None)

    async def _watch_keys(self, subject: str) -> list[str]:
        # nats-py's watcher can send its "no more" marker before entries already on the wire:
        # read until the entry with nothing pending. Its consumer is deleted on every way out.
        keys: set[str] = set()
        try:
            watcher = await jsconsumer.created(
                self.kv.watch(subject, meta_only=True, inactive_threshold=jsconsumer.INACTIVE_THRESHOLD),
                lambda w: w._sub)
            try:
                async with asyncio.timeout(30):
                    async for entry in watcher:
                        if entry is None:
                            continue
                        if entry.operation in ("DEL", "PURGE"):
                            keys.discard(entry.key)
                        else:
                            keys.add(entry.key)
                        if entry.delta == 0:
                            break
            finally:
                await jsconsumer.release(watcher._sub)
        except TimeoutError as e:
            raise Unavailable(f"KV keys of {self.kv._stream}: no end of listing") from e
        except nats.errors.Error as e:
            raise Unavailable(f"KV keys: {e}") from e
        return sorted(keys)

    async def items(self, prefix: str = "") -> list[tuple[str, Any, int]]:
        keys = await self.keys(prefix)
        gate = asyncio.Semaphore(_GET_EACH_MAX)  # read together, not one round trip after another

        async def one(k: str):
            async with gate:
                return await self.get(k)
        got = await asyncio.gather(*(one(k) for k in keys))
        return [(k, g[0], g[1]) for k, g in zip(keys, got) if g is not None]

    async def mutate(self, key: str, fn: Callable[[Any | None], Any], *, retries: int = 40) -> Any:
        """Read-modify-write with CAS, retried on conflict; `fn(None)` creates."""
        for attempt in range(retries):
            got = await self.get(key)
            new = fn(got[0] if got else None)
            try:
                if got is None:
                    await self.create(key, new)
                else:
                    await self.update(key, new, last=got[1])
                return new
            except (Conflict, AlreadyExists):
                # Jittered and growing: writers that lost together must not retry together (a
                # fixed 5 ms made 60 tags of one manifest at once fail after 20 rounds).
                await asyncio.sleep(random.uniform(0, min(0.1, 0.005 * 2 ** attempt)))
        raise Conflict(f"{key}: too many concurrent updates")
