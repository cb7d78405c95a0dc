"""Bus reply decoding without nats-py: the error-reply headers, `decode_reply`, typed events.

`shared.bus` (nats-py) and `shared.bus_lite` (the CLI's lean client) both turn a
reply into the typed value or the typed error a service raised; this module holds
that one rule so that importing it costs msgspec only (no asyncio, no logging: `dockyard
ps` runs without an event loop, see shared/bus_blocking.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec

from shared import codec
from shared.errors import from_code
from shared.messages.common import ErrorReply, Progress

Rep = TypeVar("Rep")

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"
DETAIL_HEADER = "Dockyard-Error-Detail"


def decode_reply(resp: Any, reply_type: type[Rep]) -> Rep:
    """The reply's value, or the DockyardError its error headers carry (`resp`: .headers, .data)."""
    headers = resp.headers or {}
    code = headers.get(ERROR_CODE_HEADER)
    if code:
        try:
            err = codec.decoder(ErrorReply).decode(resp.data)
            raise from_code(err.code, err.message, err.detail_code)
        except msgspec.DecodeError:
            raise from_code(code if not code.isdigit() else "INTERNAL",
                            headers.get(ERROR_HEADER, "error"), headers.get(DETAIL_HEADER) or None)
    return codec.decode(resp.data, reply_type)


class TypedEvents:
    """What both bus clients (nats-py's and the lean one) build the same way over `self.nc`
    and their own `request`: progress streams and typed events."""

    nc: Any

    async def request_with_progress(self, subject: str, msg: msgspec.Struct, reply_type: type[Rep],
                                    on_progress: Callable[[Progress], Any], *,
                                    timeout: float = 600.0) -> Rep:
        """Send a request whose `progress_inbox` field receives Progress while it runs."""
        inbox = self.nc.new_inbox()
        dec = codec.decoder(Progress)

        async def cb(m: Any) -> None:
            try:
                r = on_progress(dec.decode(m.data))
            except msgspec.DecodeError:
                import logging
                logging.getLogger("dockyard.bus").warning("bad progress message on %s", inbox)
                return
            import asyncio  # loaded already: callbacks run on the client's event loop
            if asyncio.iscoroutine(r):
                await r

        sub = await self.nc.subscribe(inbox, cb=cb)
        try:
            return await self.request(subject, msgspec.structs.replace(msg, progress_inbox=inbox),
                                      reply_type, timeout=timeout)
        finally:
            await sub.unsubscribe()  # progress sent before the reply was handled first

    async def publish(self, subject: str, msg: msgspec.Struct) -> None:
        await self.nc.publish(subject, codec.encode(msg))

    async def subscribe(self, subject: str, msg_type: type[Rep]) -> AsyncIterator[Rep]:
        """Iterate over decoded messages (events) on `subject`."""
        sub = await self.nc.subscribe(subject)
        dec = codec.decoder(msg_type)
        try:
            async for m in sub.messages:
                yield dec.decode(m.data)
        finally:
            await sub.unsubscribe()
