"""The typed client of `shared.bus.BusClient`'s interface over either of the CLI's connections.

`shared.bus_lite.Connection` (asyncio) and `shared.bus_blocking.Connection` (a plain socket,
no event loop) offer the same verbs (`request`, `publish`, `subscribe`, `new_inbox`,
`drain`) as coroutines; this layer encodes, decodes and gathers on top of them. It imports
no asyncio: `dockyard ps` does not load the event loop at all.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import msgspec

from shared import codec
from shared.bus_reply import TypedEvents, decode_reply
from shared.errors import DockyardError, Unavailable
from shared.nats_wire import NO_RESPONDERS, pending_of

Rep = TypeVar("Rep")


class LiteBusClient(TypedEvents):
    """`shared.bus.BusClient`'s interface over a `Connection` (`.nc`, like nats-py's client)."""

    def __init__(self, nc: Any):
        self.nc = nc

    async def request(self, subject: str, msg: msgspec.Struct, reply_type: type[Rep], *,
                      timeout: float = 10.0) -> Rep:
        resp = await self.nc.request(subject, codec.encode(msg), timeout=timeout)
        return decode_reply(resp, reply_type)

    async def gather(self, subject: str, msg: msgspec.Struct | None, reply_type: type[Rep], *,
                     timeout: float = 0.5, expect: int | None = None) -> list[Rep]:
        """Scatter-gather: every responder's reply within `timeout` (or once `expect` came)."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        replies: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            await self.nc.publish(subject, codec.encode(msg) if msg is not None else b"", reply=inbox)
            while expect is None or len(replies) < expect:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    m = await sub.next_msg(left)
                except TimeoutError:
                    break
                if m.status == NO_RESPONDERS:
                    break  # nobody at all listens
                try:
                    replies.append(decode_reply(m, reply_type))
                except DockyardError:
                    pass  # one responder's error does not spoil the others' answers
        finally:
            await sub.unsubscribe()
        return replies

    async def kv_entries(self, bucket: str, *, timeout: float = 2.0) -> list[tuple[str, bytes]]:
        """The live (key, value) pairs of a JetStream KV bucket; [] if it does not exist.

        One ephemeral push consumer delivering the last message per key: a round trip,
        where nats-py's keys()+get() costs one per key plus a stream info.
        """
        stream, prefix = f"KV_{bucket}", f"$KV.{bucket}."
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        name = ""
        config = {"deliver_subject": inbox, "deliver_policy": "last_per_subject", "ack_policy": "none",
                  "filter_subject": prefix + ">", "replay_policy": "instant", "mem_storage": True,
                  "num_replicas": 1, "inactive_threshold": 5_000_000_000}
        try:
            resp = await self.nc.request(f"$JS.API.CONSUMER.CREATE.{stream}",
                                         msgspec.json.encode({"stream_name": stream, "config": config}),
                                         timeout=timeout)
            info = msgspec.json.decode(resp.data)
            if "error" in info:
                if info["error"].get("err_code") == 10059:  # stream not found: no bucket yet
                    return []
                raise Unavailable(f"KV {bucket}: {info['error'].get('description', info['error'])}")
            name = info.get("name", "")
            entries: dict[str, bytes] = {}
            left = info.get("num_pending", 0)
            while left > 0:
                try:
                    m = await sub.next_msg(timeout)
                except TimeoutError as e:
                    raise Unavailable(f"KV {bucket}: the listing did not end") from e
                key = m.subject[len(prefix):]
                if (m.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                    entries.pop(key, None)
                else:
                    entries[key] = m.data
                left = pending_of(m.reply, left - 1)
        finally:
            await sub.unsubscribe()
            # Done with the consumer, however the listing ended; the server would drop it
            # after inactive_threshold anyway, this only saves it the wait.
            if name:
                await self.nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"",
                                      reply=self.nc.new_inbox())
        return sorted(entries.items())

    async def close(self) -> None:
        await self.nc.drain()
