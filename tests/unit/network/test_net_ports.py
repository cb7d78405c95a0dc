"""docker's --publish syntax: what parses to what, and what is refused."""

from ipaddress import IPv4Address

import pytest

from services.runtime_agent.network.ports import (
    ANY_IP,
    PortMapping,
    PublishedPort,
    parse_publish,
    parse_publish_all,
)
from shared.errors import InvalidArgument

LO = IPv4Address("127.0.0.1")


@pytest.mark.parametrize("spec, expected", [
    ("80", [PortMapping(80, "tcp", ANY_IP, None)]),
    ("80/udp", [PortMapping(80, "udp", ANY_IP, None)]),
    ("80/TCP", [PortMapping(80, "tcp", ANY_IP, None)]),
    ("8080:80", [PortMapping(80, "tcp", ANY_IP, (8080, 8080))]),
    ("0:80", [PortMapping(80, "tcp", ANY_IP, None)]),
    ("127.0.0.1:8080:80", [PortMapping(80, "tcp", LO, (8080, 8080))]),
    ("127.0.0.1::80", [PortMapping(80, "tcp", LO, None)]),
    ("127.0.0.1::53/udp", [PortMapping(53, "udp", LO, None)]),
    ("0.0.0.0:1:65535", [PortMapping(65535, "tcp", ANY_IP, (1, 1))]),
    (" 8080:80 ", [PortMapping(80, "tcp", ANY_IP, (8080, 8080))]),
    ("8000-8002:80-82", [
        PortMapping(80, "tcp", ANY_IP, (8000, 8000)),
        PortMapping(81, "tcp", ANY_IP, (8001, 8001)),
        PortMapping(82, "tcp", ANY_IP, (8002, 8002)),
    ]),
    ("8000-8010:80", [PortMapping(80, "tcp", ANY_IP, (8000, 8010))]),
    ("80-81", [PortMapping(80, "tcp", ANY_IP, None), PortMapping(81, "tcp", ANY_IP, None)]),
    ("127.0.0.1::80-81/udp", [PortMapping(80, "udp", LO, None), PortMapping(81, "udp", LO, None)]),
])
def test_parses(spec, expected):
    assert parse_publish(spec) == expected


@pytest.mark.parametrize("spec, why", [
    ("", "empty"),
    ("   ", "empty"),
    ("http", "not a port number"),
    ("0", "out of range"),
    ("65536", "out of range"),
    ("8080:65536", "out of range"),
    ("123456", "not a port number"),
    ("-1", "not a port number"),
    ("80/sctp", "protocol"),
    ("80/", "protocol"),
    ("8080:", "no container port"),
    (":80:80", "empty host IP"),
    ("300.0.0.1:80:80", "not an IPv4 address"),
    ("localhost:80:80", "not an IPv4 address"),
    ("[::1]:80:80", "IPv6"),
    ("::1:80:80", "IPv6"),
    ("90-80", "ends before it starts"),
    ("8000-8001:80-82", "differ in length"),
    ("8080:80-82", "differ in length"),
    ("0-5:80", "may not start at 0"),
    ("1-65535", "larger than"),
    ("80-", "not a port number"),
])
def test_refuses(spec, why):
    with pytest.raises(InvalidArgument, match=why):
        parse_publish(spec)


def test_parse_all_flattens_in_order():
    got = parse_publish_all(["8080:80", "53/udp"])
    assert [m.container_port for m in got] == [80, 53]


def test_string_forms_round_trip():
    for spec in ["127.0.0.1:8080:80/tcp", "8000-8010:80/tcp", "53/udp", "127.0.0.1::80/tcp"]:
        (m,) = parse_publish(spec)
        assert str(m) == spec
        assert parse_publish(str(m)) == [m]


@pytest.mark.parametrize("other_ip, other_proto, other_port, overlaps", [
    ("127.0.0.1", "tcp", 8080, True),
    ("0.0.0.0", "tcp", 8080, True),     # all addresses include 127.0.0.1
    ("10.0.0.1", "tcp", 8080, False),
    ("127.0.0.1", "udp", 8080, False),
    ("127.0.0.1", "tcp", 8081, False),
])
def test_overlap_rules(other_ip, other_proto, other_port, overlaps):
    p = PublishedPort(LO, 8080, 80, "tcp")
    assert p.overlaps(other_proto, IPv4Address(other_ip), other_port) is overlaps
    everywhere = PublishedPort(ANY_IP, 8080, 80, "tcp")
    same_port = other_proto == "tcp" and other_port == 8080
    assert everywhere.overlaps(other_proto, IPv4Address(other_ip), other_port) is same_port
