"""The embedded DNS server of user networks (docker's 127.0.0.11, podman's aardvark-dns).

The agent listens on UDP port 53 of each user network's gateway address (inside the
network, like aardvark-dns), and the containers' resolv.conf names that address. A
question for a container's name, short id or alias is answered from the networks of the
container that asks (found by its source address), so two networks never see each
other's names; anything else is forwarded to the host's resolvers, except from an
internal network, which has no way out. The wire format is dnslib's.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord

from shared.errors import Unavailable

log = logging.getLogger("dockyard.agent.dns")

DNS_PORT = 53
TTL = 600  # docker's
_FORWARD_TIMEOUT = 2.0

# (network id, asking address, lower-case name without the final dot) -> addresses, or None
# when the name is not one of the asker's networks (then it is forwarded); or an awaitable of that.
Lookup = Callable[[str, IPv4Address, str], list[IPv4Address] | None | Awaitable[list[IPv4Address] | None]]


def host_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[tuple[str, int]]:
    """The host's nameservers (loopback ones too: the agent itself asks them)."""
    try:
        text = resolv_conf.read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0] == "nameserver" and ":" not in f[1]:
            out.append((f[1], DNS_PORT))
    return out


def parse_upstreams(text: str) -> list[tuple[str, int]]:
    """`DOCKYARD_DNS_UPSTREAM`: `1.2.3.4,127.0.0.1:5353`."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if item:
            host, _, port = item.partition(":")
            out.append((host, int(port) if port else DNS_PORT))
    return out


@dataclass
class _Listener:
    transport: asyncio.DatagramTransport
    internal: bool


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer, network_id: str, subnet: IPv4Network | None):
        self.server = server
        self.network_id = network_id
        self.subnet = subnet
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        source = IPv4Address(addr[0])
        if self.subnet is not None and source not in self.subnet:
            # The gateway is a host address anyone on the host's networks may reach: only
            # the network's own containers hear its names (docker's DNS is in their netns).
            return
        try:
            reply = self.server.answer(self.network_id, data, source)
        except Exception:  # noqa: BLE001 - one bad question must not stop the server
            log.exception("dns: answering %s failed", addr[0])
            return
        if inspect.isawaitable(reply):  # forwarded, or an overlay's names from the bus
            self.server._spawn(self._send_later(reply, addr))
        elif reply is not None:
            self._send(reply, addr)  # a name of ours: answered within this callback

    async def _send_later(self, pending, addr) -> None:
        try:
            reply = await pending
        except Exception:  # noqa: BLE001
            log.exception("dns: answering %s failed", addr[0])
            return
        if reply is not None:
            self._send(reply, addr)

    def _send(self, reply: bytes, addr) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


class DnsServer:
    def __init__(self, lookup: Lookup, upstreams: list[tuple[str, int]]):
        self.lookup = lookup
        self.upstreams = upstreams
        self._listeners: dict[str, _Listener] = {}
        self._tasks: set[asyncio.Task] = set()
        self._names: dict[bytes, str] = {}  # query less its id -> the name asked for
        self._packed: dict[tuple, bytes] = {}  # (query less its id, addresses) -> reply less its id

    def _spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def listen(self, network_id: str, address: IPv4Address, *, internal: bool,
                     port: int = DNS_PORT, subnet: IPv4Network | None = None) -> None:
        """Answer on `address:port` for the network (only to askers in `subnet`); a repeated call rebinds."""
        await self.unlisten(network_id)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self, network_id, subnet), local_addr=(str(address), port))
        except OSError as e:
            # e.g. a resolver of the host's bound to 0.0.0.0:53 holds every address's port
            raise Unavailable(f"cannot serve DNS on {address}:{port}: {e.strerror or e}") from e
        self._listeners[network_id] = _Listener(transport, internal)

    def address(self, network_id: str) -> tuple[str, int] | None:
        """Where the network's listener is bound (its port, when asked for 0)."""
        lst = self._listeners.get(network_id)
        return lst.transport.get_extra_info("sockname")[:2] if lst is not None else None

    async def unlisten(self, network_id: str) -> None:
        lst = self._listeners.pop(network_id, None)
        if lst is not None:
            lst.transport.close()

    async def close(self) -> None:
        for nid in list(self._listeners):
            await self.unlisten(nid)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def resolve(self, network_id: str, data: bytes, source: IPv4Address) -> bytes | None:
        """The reply to one query packet (None: not a query we can even parse)."""
        reply = self.answer(network_id, data, source)
        return await reply if inspect.isawaitable(reply) else reply

    def answer(self, network_id: str, data: bytes, source: IPv4Address):
        """The reply at once for a name of ours or a refusal; else an awaitable of it.

        Everything of a query but its id (bytes 0-1) decides the reply, together with the
        addresses found: both are cached, so a repeated question costs no parse and no pack
        (dnslib's take ~0.1-0.3 ms, most of the answer's time)."""
        data = bytes(data)
        key = data[2:]
        name = self._names.get(key)
        query = None
        if name is None:
            query = _parse(data)
            if query is None:
                return None
            name = str(query.questions[0].qname).rstrip(".").lower()
            _remember(self._names, key, name)
        found = self.lookup(network_id, source, name)
        if inspect.isawaitable(found):
            return self._answer_later(query or DNSRecord.parse(data), data, found, network_id)
        if found is None:
            return self._elsewhere(query or DNSRecord.parse(data), data, network_id)
        packed_key = (key, tuple(found))
        tail = self._packed.get(packed_key)
        if tail is None:
            tail = self._reply(query or DNSRecord.parse(data), found)[2:]
            _remember(self._packed, packed_key, tail)
        return data[:2] + tail

    async def _answer_later(self, query: DNSRecord, data: bytes, found, network_id: str) -> bytes | None:
        found = await found
        if found is not None:
            return self._reply(query, found)
        out = self._elsewhere(query, data, network_id)
        return await out if inspect.isawaitable(out) else out

    @staticmethod
    def _reply(query: DNSRecord, found: list[IPv4Address]) -> bytes:
        reply = query.reply()
        q = query.questions[0]
        if q.qtype in (QTYPE.A, QTYPE.ANY):
            for ip in found:
                reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(str(ip)), ttl=TTL))
        # AAAA and others of a known name: NOERROR with no answer (no IPv6 here).
        return reply.pack()

    def _elsewhere(self, query: DNSRecord, data: bytes, network_id: str):
        lst = self._listeners.get(network_id)
        if lst is not None and lst.internal:
            return _error(query, RCODE.REFUSED)  # an internal network has no way out
        if not self.upstreams:
            return _error(query, RCODE.SERVFAIL)
        return self._forwarded(query, data)

    async def _forwarded(self, query: DNSRecord, data: bytes) -> bytes:
        answer = await self._forward(data)
        return answer if answer is not None else _error(query, RCODE.SERVFAIL)

    async def _forward(self, data: bytes) -> bytes | None:
        """Ask each upstream in turn; the first answer, unchanged (it carries the query's id)."""
        loop = asyncio.get_running_loop()
        for host, port in self.upstreams:
            fut: asyncio.Future[bytes] = loop.create_future()

            class _Up(asyncio.DatagramProtocol):
                def datagram_received(self, d: bytes, a) -> None:
                    if not fut.done():
                        fut.set_result(d)

                def error_received(self, exc: Exception) -> None:
                    if not fut.done():
                        fut.set_exception(exc)

            try:
                transport, _ = await loop.create_datagram_endpoint(_Up, remote_addr=(host, port))
            except OSError:
                continue
            try:
                transport.sendto(data)
                with contextlib.suppress(asyncio.TimeoutError, OSError):
                    return await asyncio.wait_for(fut, _FORWARD_TIMEOUT)
            finally:
                transport.close()
        return None


_CACHE_MAX = 4096


def _remember(cache: dict, key, value) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()  # a bound, not an LRU: the working set of a host's containers is small
    cache[key] = value


def _parse(data: bytes) -> DNSRecord | None:
    try:
        query = DNSRecord.parse(data)
    except (DNSError, ValueError, IndexError):
        return None
    if query.header.qr or not query.questions:
        return None
    return query


def _error(query: DNSRecord, rcode: int) -> bytes:
    reply = query.reply()
    reply.header.rcode = rcode
    return reply.pack()
