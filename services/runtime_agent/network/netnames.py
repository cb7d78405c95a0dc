"""Names, addresses and subnets of user networks: checks and choices that touch no state.

Bridge and chain names carry a counter in base 36; a container's MAC is docker's (02:42
then its address); a subnet not given comes from the pool, skipping what the host routes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from services.runtime_agent.network._exec import CommandFailed, ip_batch, run
from services.runtime_agent.network.bridge import link_exists
from shared.errors import InvalidArgument
from shared.messages.networks import BUILTIN_NETWORKS, NetworkRecord

NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")  # docker's, with a length bound
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def check_network_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidArgument(f"invalid network name {name!r}: [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    if name in BUILTIN_NETWORKS:
        raise InvalidArgument(f"{name} is a pre-defined network and cannot be created")
    return name


def b36(n: int) -> str:
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = _B36[d] + out
        if not n:
            return out


def mac_of(ip: IPv4Address) -> str:
    # docker's: 02:42 then the address, so a MAC never outlives its address on the wire
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


@dataclass(frozen=True)
class Pool:
    """Where subnets come from when `network create` names none (docker's default-address-pools)."""

    base: IPv4Network = IPv4Network("10.89.0.0/16")
    size: int = 24

    def candidates(self):
        if self.size < self.base.prefixlen:
            return iter([self.base])
        return self.base.subnets(new_prefix=self.size)


def gateway_of(subnet: IPv4Network, text: str) -> IPv4Address:
    if not text:
        return subnet.network_address + 1
    try:
        gw = IPv4Address(text)
    except ValueError as e:
        raise InvalidArgument(f"invalid gateway {text!r}: {e}") from e
    if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgument(f"gateway {gw} is not a host address of subnet {subnet}")
    return gw


def address_in(rec: NetworkRecord, text: str) -> IPv4Address:
    try:
        ip = IPv4Address(text)
    except ValueError as e:
        raise InvalidArgument(f"invalid --ip {text!r}: {e}") from e
    if ip not in IPv4Network(rec.subnet):
        raise InvalidArgument(f"address {ip} is not in network {rec.name}'s subnet {rec.subnet}")
    return ip


async def routed() -> list[IPv4Network]:
    """Subnets this host already routes (docker skips pools that overlap them)."""
    try:
        routes = json.loads(await run("ip", "-j", "-4", "route", "show"))
    except (CommandFailed, ValueError):
        return []
    out = []
    for r in routes:
        dst = r.get("dst", "")
        if dst and dst != "default":
            try:
                out.append(IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
            except ValueError:
                continue
    return out


async def del_link(name: str) -> None:
    if not link_exists(name):
        return
    try:
        await ip_batch([f"link del {name}"])
    except CommandFailed:
        if link_exists(name):
            raise
