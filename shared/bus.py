"""The bus harness: connecting, typed request handlers, error replies, events.

A service registers typed endpoints on a `BusService` (built on `nats.micro`, so
`$SRV.PING/INFO/STATS` discover it). A handler takes the decoded request Struct and
returns a reply Struct; a raised `DockyardError` becomes an error reply carrying its
code, which `BusClient.request` turns back into the same error class. KV state is
shared/kv.py (its names importable from here too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.micro
from nats.aio.client import Client as NATS
from nats.micro.request import Request as MicroRequest
from nats.micro.service import EndpointConfig, ServiceConfig

from shared import codec
from shared.bus_reply import (DETAIL_HEADER, ERROR_CODE_HEADER, ERROR_HEADER, TypedEvents,  # noqa: F401
                              decode_reply)
from shared.errors import DockyardError, Internal, InvalidArgument, Unauthenticated, Unavailable
from shared.kv import TypedKV, kv_bucket, kv_key, kv_key_parts  # noqa: F401  (callers import them from here)
from shared.messages.common import ErrorReply, Progress

log = logging.getLogger("dockyard.bus")

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")
Handler = Callable[[Any], Awaitable[msgspec.Struct | None]]



async def connect(url: str, name: str = "dockyard", *, connect_timeout: float = 5,
                  creds: str | None = None, ca: "str | ssl.SSLContext | None" = None) -> NATS:
    """Connect, reconnecting forever once connected; a server not there at first is Unavailable.

    `creds` is a NATS credentials file (default `$DOCKYARD_CREDS`, unless the URL carries a
    user and password); its principal's replies arrive under its own inbox prefix. `ca` is
    the fleet CA file a server demanding TLS must present a certificate of (default
    shared.tls.default_ca_file), or a ready SSL context; a server that does not demand TLS
    is spoken to plainly.
    """
    auth: dict[str, Any] = {}
    creds = creds if creds is not None else ("" if "@" in url else os.environ.get("DOCKYARD_CREDS", ""))
    if creds:
        from shared.credentials import read_creds
        auth = {"user_credentials": creds, "inbox_prefix": read_creds(creds).inbox}
    from shared import tls
    ca = ca if ca is not None else tls.default_ca_file()
    if ca:
        auth["tls"] = ca if isinstance(ca, ssl.SSLContext) else tls.client_context(ca)
    connected = False
    refused: list[str] = []
    hopeless = asyncio.Event()  # set by an error that no retry mends: refused credentials, a bad certificate
    bad_cert: list[str] = []

    async def on_disconnect() -> None:
        _count_connection("NATS_DISCONNECTS")

    async def on_reconnect() -> None:
        _count_connection("NATS_RECONNECTS")

    async def on_error(e: Exception) -> None:
        # Before the first connection the caller gets one Unavailable instead of a log per try.
        (log.warning if connected else log.debug)("NATS %s: %s", url, str(e) or type(e).__name__)
        if connected:
            return
        if "authorization violation" in str(e).lower():
            refused.append(str(e))
            hopeless.set()
        elif isinstance(e, ssl.SSLCertVerificationError):
            bad_cert.append(e.verify_message or str(e))
            hopeless.set()

    nc = NATS()
    # nats-py retries the first connect forever when reconnects are unlimited: bound it, and
    # end it at the first error that retrying cannot fix.
    attempt = asyncio.ensure_future(nc.connect(
        [u.strip() for u in url.split(",")], name=name, connect_timeout=min(connect_timeout, 2), max_reconnect_attempts=-1,
        # in the order given: a joined host's services list their own NATS node first
        dont_randomize=True, reconnect_time_wait=0.5, allow_reconnect=True, error_cb=on_error,
        disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, **auth))
    give_up = asyncio.ensure_future(hopeless.wait())
    try:
        await asyncio.wait({attempt, give_up}, timeout=connect_timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        give_up.cancel()
    failure: BaseException | None = None
    if attempt.done() and not attempt.cancelled():
        failure = attempt.exception()
    else:
        attempt.cancel()
        with contextlib.suppress(BaseException):
            await attempt
        failure = asyncio.TimeoutError()
    if failure is None:
        connected = True
        return nc
    # A cancelled first connect can leave nats-py's reconnecting tasks behind (over TLS they
    # keep the process alive): close the client for good.
    with contextlib.suppress(Exception):
        await nc.close()
    where = _without_password(url)
    if refused:
        raise Unauthenticated(f"NATS at {where} refused the credentials: Authorization Violation") from failure
    if bad_cert:
        raise Unavailable(f"NATS at {where}: its TLS certificate is not one the fleet CA signed for that "
                          f"address ({bad_cert[0]})") from failure
    if not isinstance(failure, (OSError, nats.errors.Error, asyncio.TimeoutError)):
        raise failure
    raise Unavailable(f"cannot reach NATS at {where}: {str(failure) or 'timed out'}") from failure


def _count_connection(family: str) -> None:
    """Count a lost or regained connection, in a service (which has loaded its metrics) only:
    a short CLI command does not pay for prometheus-client."""
    import sys
    families = sys.modules.get("shared.metrics.families")
    if families is not None:
        getattr(families, family).inc()


def _without_password(url: str) -> str:
    return re.sub(r"[^,/@]*@", "", url)


# Most requests are a few hundred bytes; a subject that needs more says so where it is
# registered. The server's own max_payload (1 MiB by default) bounds every message anyway.
DEFAULT_MAX_REQUEST = 64 << 10


class Endpoint(msgspec.Struct, frozen=True):
    """One registered request subject: what it decodes, how big a request may be."""

    subject: str
    request_type: type
    max_bytes: int | None  # None: only the server's max_payload
    empty_ok: bool  # an empty payload is the request type's defaults

    def metadata(self) -> dict[str, str]:
        """What `$SRV.INFO` tells about the endpoint, so that callers can see the rules."""
        return {"request": f"{self.request_type.__module__}.{self.request_type.__qualname__}",
                "max_bytes": str(self.max_bytes or 0), "empty": "default" if self.empty_ok else "refused"}

    def decode(self, dec: msgspec.json.Decoder, data: bytes) -> Any:
        """The request, or InvalidArgument naming what is wrong with `data`."""
        name = self.request_type.__name__
        if self.max_bytes is not None and len(data) > self.max_bytes:
            raise InvalidArgument(f"{name} on {self.subject} is {len(data)} bytes, over its bound of "
                                  f"{self.max_bytes}", detail_code="REQUEST_TOO_LARGE")
        if not data:
            if not self.empty_ok:
                raise InvalidArgument(f"empty {name} on {self.subject}: send a JSON object "
                                      "({} for the defaults)")
            data = b"{}"
        try:
            return dec.decode(data)
        except msgspec.ValidationError as e:
            raise InvalidArgument(f"invalid {name} on {self.subject}: {e}") from e
        except msgspec.DecodeError as e:
            raise InvalidArgument(f"malformed JSON for {name} on {self.subject}: {e}") from e


# set by `dockyard up` for each process it starts; carried in the service's $SRV metadata
INSTANCE_ENV = "DOCKYARD_INSTANCE"


class BusService:
    """One service kind's endpoints on the bus, with graceful drain."""

    def __init__(self, nc: NATS, name: str, *, version: str = "0.1.0", description: str = "",
                 metadata: dict[str, str] | None = None):
        self.nc = nc
        self.name = name
        self._config = ServiceConfig(name=name, version=version, description=description,
                                     metadata=dict(metadata or {}), queue_group=f"dockyard.{name}")
        self._endpoints: list[EndpointConfig] = []
        self._inflight: set[asyncio.Task] = set()
        self._service: nats.micro.Service | None = None
        from shared.metrics import bus as bus_metrics, exposition
        self._observe = bus_metrics.observe
        if exposition.advertised_url():
            self._config.metadata.setdefault("metrics", exposition.advertised_url())
        # the supervisor that started this process waits for this instance, not any of the fleet's
        if os.environ.get(INSTANCE_ENV):
            self._config.metadata.setdefault("instance", os.environ[INSTANCE_ENV])

    @property
    def id(self) -> str:
        return self._service.id if self._service else ""

    def endpoint(self, subject: str, request_type: type[Req],
                 handler: Callable[[Req], Awaitable[msgspec.Struct | None]], *,
                 queue: str | None = None, max_bytes: int | None = DEFAULT_MAX_REQUEST,
                 empty_ok: bool | None = None) -> None:
        """Register `handler` for `subject`; call before `start`.

        `max_bytes` bounds a request (None: only the server's max_payload). An empty
        payload stands for the defaults only where `empty_ok`: by default, for request
        types without fields; a verb that changes something needs an explicit `{}`.
        """
        name = subject.replace(".", "-").replace("*", "any").replace(">", "all")
        if empty_ok is None:
            empty_ok = not msgspec.structs.fields(request_type)
        ep = Endpoint(subject, request_type, max_bytes, empty_ok)
        dec = codec.decoder(request_type)

        async def on_msg(req: MicroRequest) -> None:
            # micro runs one callback at a time per subscription; long handlers
            # (builds, pulls) must not hold up the next request.
            task = asyncio.create_task(self._serve_one(req, ep, dec, handler))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

        self._endpoints.append(EndpointConfig(name=name[:60], subject=subject, handler=on_msg,
                                              queue_group=queue, metadata=ep.metadata()))

    async def _serve_one(self, req: MicroRequest, ep: Endpoint, dec: msgspec.json.Decoder,
                         handler: Handler) -> None:
        start, code, sent = time.perf_counter(), "ok", 0
        try:
            reply = await handler(ep.decode(dec, req.data))
            if req._msg.reply:
                body = codec.encode(reply) if reply is not None else b"{}"
                sent = len(body)
                await req.respond(body)
        except DockyardError as e:
            code = e.code
            await _respond_error(req, e)
        except asyncio.CancelledError:
            code = Unavailable.code
            await _respond_error(req, Unavailable(f"{self.name} is shutting down"))
            raise
        except Exception as e:  # a bug: report it to the caller instead of a timeout
            code = Internal.code
            log.exception("handler for %s failed", req.subject)
            await _respond_error(req, Internal(f"{self.name}: {type(e).__name__}: {e}"))
        finally:
            self._observe(ep.subject, code, time.perf_counter() - start, len(req.data), sent)

    async def start(self) -> None:
        self._service = await nats.micro.add_service(self.nc, self._config)
        for ep in self._endpoints:
            await self._service.add_endpoint(ep)
        await self.nc.flush()

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop taking requests, then let in-flight ones finish (up to `drain_timeout`)."""
        if self._service is not None:
            await self._service.stop()
            self._service = None
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=drain_timeout)
            for t in pending:
                t.cancel()


async def _respond_error(req: MicroRequest, e: DockyardError) -> None:
    if not req._msg.reply:
        return
    body = codec.encode(ErrorReply(code=e.code, message=e.message, detail_code=e.detail_code))
    try:
        await req.respond(body, headers={ERROR_CODE_HEADER: e.code, ERROR_HEADER: e.message[:1000],
                                         DETAIL_HEADER: e.detail_code or ""})
    except nats.errors.Error:
        log.warning("could not send error reply on %s", req.subject)


class BusClient(TypedEvents):
    """Typed requests and events over one NATS connection."""

    def __init__(self, nc: NATS):
        self.nc = nc

    async def request(self, subject: str, msg: msgspec.Struct, reply_type: type[Rep], *,
                      timeout: float = 10.0) -> Rep:
        try:
            resp = await self.nc.request(subject, codec.encode(msg), timeout=timeout)
        except nats.errors.NoRespondersError as e:
            raise Unavailable(f"no service answers on {subject}") from e
        except (nats.errors.TimeoutError, asyncio.TimeoutError) as e:
            raise Unavailable(f"no reply on {subject} within {timeout:g}s") from e
        return decode_reply(resp, reply_type)

    async def gather(self, subject: str, msg: msgspec.Struct | None, reply_type: type[Rep], *,
                     timeout: float = 0.5, expect: int | None = None) -> list[Rep]:
        """Scatter-gather: every responder's reply within `timeout` (or once `expect` came)."""
        inbox = self.nc.new_inbox()
        replies: list[Any] = []
        done = asyncio.Event()
        sub = await self.nc.subscribe(inbox)

        async def collect() -> None:
            async for m in sub.messages:
                try:
                    replies.append(decode_reply(m, reply_type))
                except DockyardError as e:
                    log.warning("gather %s: %s", subject, e.message)
                if expect is not None and len(replies) >= expect:
                    done.set()
                    return

        task = asyncio.create_task(collect())
        try:
            await self.nc.publish(subject, codec.encode(msg) if msg is not None else b"", reply=inbox)
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        finally:
            task.cancel()
            await sub.unsubscribe()
        return replies


async def publish_progress(nc: NATS, inbox: str, progress: Progress) -> None:
    """Send one progress message to a requester; silently nothing if it asked for none."""
    if inbox:
        await nc.publish(inbox, codec.encode(progress))


def new_id() -> str:
    return uuid.uuid4().hex
