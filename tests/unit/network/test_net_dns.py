"""The embedded DNS server over real UDP sockets on 127.0.0.1, with a dnslib upstream."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from services.runtime_agent.network.dns import DnsServer, host_resolvers, parse_upstreams

NAMES = {("net1", "web"): [IPv4Address("10.9.0.2")], ("net1", "www"): [IPv4Address("10.9.0.2")]}


def lookup(nid: str, source: IPv4Address, name: str):
    return NAMES.get((nid, name))


class _Upstream(asyncio.DatagramProtocol):
    """A resolver that knows one outside name."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        q = DNSRecord.parse(data)
        reply = q.reply()
        if str(q.q.qname) == "example.test.":
            reply.add_answer(RR("example.test.", QTYPE.A, rdata=A("192.0.2.7"), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        self.transport.sendto(reply.pack(), addr)


async def ask(addr, name: str, qtype: str = "A") -> DNSRecord:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data, a):
            if not fut.done():
                fut.set_result(data)

    q = DNSRecord.question(name, qtype)
    transport, _ = await loop.create_datagram_endpoint(P, remote_addr=addr)
    try:
        transport.sendto(q.pack())
        reply = DNSRecord.parse(await asyncio.wait_for(fut, 10))
    finally:
        transport.close()
    assert reply.header.id == q.header.id
    return reply


@pytest.fixture
async def upstream():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Upstream, local_addr=("127.0.0.1", 0))
    yield transport.get_extra_info("sockname")[:2]
    transport.close()


async def test_names_answered_others_forwarded(upstream):
    dns = DnsServer(lookup, [upstream])
    await dns.listen("net1", IPv4Address("127.0.0.1"), internal=False, port=0)
    await dns.listen("net2", IPv4Address("127.0.0.1"), internal=True, port=0)
    try:
        addr = dns.address("net1")
        r = await ask(addr, "web")
        assert [(str(a.rname), str(a.rdata)) for a in r.rr] == [("web.", "10.9.0.2")]
        assert r.header.rcode == RCODE.NOERROR and r.rr[0].ttl == 600
        r = await ask(addr, "WWW.")  # names are case-insensitive
        assert [str(a.rdata) for a in r.rr] == ["10.9.0.2"]
        r = await ask(addr, "web", "AAAA")  # a known name without IPv6: no answer, no error
        assert (r.header.rcode, r.rr) == (RCODE.NOERROR, [])
        r = await ask(addr, "example.test")  # forwarded to the host's resolver
        assert [str(a.rdata) for a in r.rr] == ["192.0.2.7"]
        r = await ask(addr, "nothing.test")
        assert r.header.rcode == RCODE.NXDOMAIN
        # the other network does not know net1's names, and an internal one forwards nothing
        internal = dns.address("net2")
        assert (await ask(internal, "web")).header.rcode == RCODE.REFUSED
        assert (await ask(internal, "example.test")).header.rcode == RCODE.REFUSED
    finally:
        await dns.close()


async def test_no_upstream_is_servfail_and_garbage_is_ignored():
    dns = DnsServer(lookup, [])
    await dns.listen("net1", IPv4Address("127.0.0.1"), internal=False, port=0)
    try:
        addr = dns.address("net1")
        assert (await ask(addr, "example.test")).header.rcode == RCODE.SERVFAIL
        assert await dns.resolve("net1", b"\x00\x01garbage", IPv4Address("127.0.0.1")) is None
        assert (await ask(addr, "web")).rr  # still serving
    finally:
        await dns.close()
    assert dns.address("net1") is None


def test_upstream_settings(tmp_path):
    assert parse_upstreams("10.0.0.1, 127.0.0.1:5353") == [("10.0.0.1", 53), ("127.0.0.1", 5353)]
    conf = tmp_path / "resolv.conf"
    conf.write_text("search x\nnameserver 127.0.0.53\nnameserver fe80::1\nnameserver 10.1.1.1\n")
    assert host_resolvers(conf) == [("127.0.0.53", 53), ("10.1.1.1", 53)]
    assert host_resolvers(tmp_path / "missing") == []


async def test_repeated_questions_get_their_own_id_and_the_current_addresses():
    table = {"db": [IPv4Address("10.9.0.5")]}
    dns = DnsServer(lambda nid, src, name: table.get(name), [])
    src = IPv4Address("10.9.0.9")
    first, second = DNSRecord.question("db"), DNSRecord.question("db")
    first.header.id, second.header.id = 1111, 2222
    r1 = DNSRecord.parse(await dns.resolve("n", first.pack(), src))
    r2 = DNSRecord.parse(await dns.resolve("n", second.pack(), src))
    assert (r1.header.id, r2.header.id) == (1111, 2222)
    assert [str(a.rdata) for a in r2.rr] == ["10.9.0.5"]
    table["db"] = [IPv4Address("10.9.0.6"), IPv4Address("10.9.0.7")]  # the container came back elsewhere
    r3 = DNSRecord.parse(await dns.resolve("n", first.pack(), src))
    assert r3.header.id == 1111 and [str(a.rdata) for a in r3.rr] == ["10.9.0.6", "10.9.0.7"]
    del table["db"]
    assert DNSRecord.parse(await dns.resolve("n", first.pack(), src)).header.rcode == RCODE.SERVFAIL


async def test_askers_outside_the_network_hear_nothing():
    from ipaddress import IPv4Network
    dns = DnsServer(lookup, [])
    await dns.listen("net1", IPv4Address("127.0.0.1"), internal=False, port=0,
                     subnet=IPv4Network("10.9.0.0/24"))  # 127.0.0.1 is not in it
    try:
        with pytest.raises(TimeoutError):
            loop = asyncio.get_running_loop()
            got = loop.create_future()

            class P(asyncio.DatagramProtocol):
                def datagram_received(self, data, a):
                    got.set_result(data)

            transport, _ = await loop.create_datagram_endpoint(P, remote_addr=dns.address("net1"))
            try:
                transport.sendto(DNSRecord.question("web").pack())
                await asyncio.wait_for(got, 0.5)
            finally:
                transport.close()
    finally:
        await dns.close()
