"""docker's `--publish` syntax, parsed into typed port mappings.

    [IP:][HOSTPORT:]CONTAINERPORT[/PROTO]     ports may be ranges: 8000-8010

as docker (moby's `nat.ParsePortSpec`) reads it: a container range with a host
range of the same length maps port to port; a host range with one container port
means "the first free host port of that range"; no host port means "any free one".
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Literal

from shared.errors import InvalidArgument

Protocol = Literal["tcp", "udp"]
ANY_IP = IPv4Address("0.0.0.0")
MAX_PORTS_PER_SPEC = 1024  # a typo like 1-65535 should fail, not add 65k rules


@dataclass(frozen=True, slots=True)
class PortMapping:
    """What the user asked for. `host_ports` None: any free port; (a, b): one from a..b."""

    container_port: int
    protocol: Protocol = "tcp"
    host_ip: IPv4Address = ANY_IP
    host_ports: tuple[int, int] | None = None

    def __str__(self) -> str:
        ip = "" if self.host_ip == ANY_IP else f"{self.host_ip}:"
        if self.host_ports is None:
            host = ""
        elif self.host_ports[0] == self.host_ports[1]:
            host = str(self.host_ports[0])
        else:
            host = f"{self.host_ports[0]}-{self.host_ports[1]}"
        prefix = f"{ip}{host}:" if ip or host else ""
        return f"{prefix}{self.container_port}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class PublishedPort:
    """A mapping in force: host_ip:host_port forwards to the container's port."""

    host_ip: IPv4Address
    host_port: int
    container_port: int
    protocol: Protocol = "tcp"

    def overlaps(self, protocol: str, host_ip: IPv4Address, host_port: int) -> bool:
        """Would a mapping of host_ip:host_port take this one's traffic?"""
        return (self.protocol == protocol and self.host_port == host_port
                and (self.host_ip == host_ip or ANY_IP in (self.host_ip, host_ip)))

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.container_port}/{self.protocol}"


def _bad(spec: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid port mapping {spec!r}: {why}")


def _port(spec: str, text: str, what: str, allow_zero: bool = False) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise _bad(spec, f"{what} {text!r} is not a port number")
    n = int(text)
    if not (0 if allow_zero else 1) <= n <= 65535:
        raise _bad(spec, f"{what} {n} is out of range 1-65535")
    return n


def _range(spec: str, text: str, what: str, allow_zero: bool = False) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    a = _port(spec, lo, what, allow_zero)
    b = _port(spec, hi, what) if sep else a
    if b < a:
        raise _bad(spec, f"{what} range {text!r} ends before it starts")
    if b - a + 1 > MAX_PORTS_PER_SPEC:
        raise _bad(spec, f"{what} range {text!r} is larger than {MAX_PORTS_PER_SPEC} ports")
    return a, b


def parse_publish(spec: str) -> list[PortMapping]:
    """Parse one `--publish` value into one mapping per container port."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad(str(spec), "empty")
    text = spec.strip()
    body, slash, proto = text.rpartition("/")
    if not slash:
        body, proto = text, "tcp"
    proto = proto.lower()
    if proto not in ("tcp", "udp"):
        raise _bad(spec, f"protocol {proto!r} is not supported (tcp, udp)")
    if body.startswith("[") or body.count(":") > 2:
        raise _bad(spec, "IPv6 host addresses are not supported")
    parts = body.split(":")
    ip_text, host_text, ctr_text = ([""] * (3 - len(parts)) + parts)
    if len(parts) == 3 and not ip_text:
        raise _bad(spec, "empty host IP")
    try:
        host_ip = IPv4Address(ip_text) if ip_text else ANY_IP
    except ValueError as e:
        raise _bad(spec, f"host IP {ip_text!r} is not an IPv4 address") from e
    if not ctr_text:
        raise _bad(spec, "no container port")
    ctr = _range(spec, ctr_text, "container port")
    # Host port 0, like docker, asks for any free port.
    host = _range(spec, host_text, "host port", allow_zero=True) if host_text else None
    if host == (0, 0):
        host = None
    elif host is not None and host[0] == 0:
        raise _bad(spec, "host port range may not start at 0")

    n_ctr = ctr[1] - ctr[0] + 1
    if host is None:
        return [PortMapping(p, proto, host_ip, None) for p in range(ctr[0], ctr[1] + 1)]
    n_host = host[1] - host[0] + 1
    if n_ctr == 1:
        return [PortMapping(ctr[0], proto, host_ip, host)]
    if n_ctr != n_host:
        raise _bad(spec, "host and container port ranges differ in length")
    return [
        PortMapping(c, proto, host_ip, (h, h))
        for c, h in zip(range(ctr[0], ctr[1] + 1), range(host[0], host[1] + 1))
    ]


def parse_publish_all(specs: list[str]) -> list[PortMapping]:
    return [m for s in specs for m in parse_publish(s)]
