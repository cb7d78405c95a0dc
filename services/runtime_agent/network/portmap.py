"""Published ports as DNAT rules in the network's own nat chain.

Each rule carries a comment `<prefix>:<container>:<proto>:<hostip>:<hostport>:<ctrport>`,
so removal deletes exactly that container's rules and a restarted agent rebuilds
its table of mappings from `iptables-save` alone. The chain is reached from nat
PREROUTING and OUTPUT for local destinations (see bridge.py), which is what makes
127.0.0.1:HOSTPORT work from the host itself.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from services.runtime_agent.network import iptables
from services.runtime_agent.network._exec import CommandFailed
from services.runtime_agent.network.config import NetworkConfig
from services.runtime_agent.network.ports import ANY_IP, PortMapping, PublishedPort
from shared.errors import Conflict, InvalidArgument

_PICK_ATTEMPTS = 64


def _hold(protocol: str, ip: IPv4Address, port: int) -> socket.socket | None:
    """A socket that holds host port `port` (0: one the kernel picks), or None if a host socket has it.

    With DNAT nothing would listen on a published port, so another program could bind it
    later and find its own loopback traffic sent to the container. As docker's proxy does,
    the agent keeps a listener on each published port for as long as the mapping stands:
    no one else can bind it, and DNAT takes the traffic before it reaches the listener.
    """
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # Ignore TIME_WAIT leftovers; the listen below is what keeps others off.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((str(ip), port))
        if kind == socket.SOCK_STREAM:
            s.listen(1)
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            return None
        if e.errno == errno.EADDRNOTAVAIL:
            raise InvalidArgument(f"{ip} is not an address of this host") from e
        raise
    return s


def _hold_again(p: PublishedPort) -> socket.socket | None:
    """`_hold` of a mapping made before this agent started; None where that is no longer possible."""
    try:
        return _hold(p.protocol, p.host_ip, p.host_port)
    except (InvalidArgument, OSError):
        return None


def _close_all(socks: Iterable[socket.socket]) -> None:
    for s in socks:
        s.close()


class PortMapper:
    def __init__(self, config: NetworkConfig):
        self.config = config
        # container id -> [(port, rule spec as applied)]: the spec deletes it exactly.
        self._bound: dict[str, list[tuple[PublishedPort, str]]] = {}
        self._lock = asyncio.Lock()
        self._held: dict[str, list[socket.socket]] = {}  # container id -> the listeners on its host ports
        # networks: the host ports other networks' mappers of this agent hold (one host, one port space)
        self.elsewhere: Callable[[], Iterable[PublishedPort]] = tuple

    def ports(self, container_id: str) -> list[PublishedPort]:
        return [p for p, _ in self._bound.get(container_id, ())]

    def containers(self) -> list[str]:
        return list(self._bound)

    # Rules -------------------------------------------------------------------
    def _comment(self, container_id: str, p: PublishedPort) -> str:
        return (f"{self.config.prefix}:{container_id}:{p.protocol}:"
                f"{p.host_ip}:{p.host_port}:{p.container_port}")

    def _parse_comment(self, comment: str | None) -> tuple[str, PublishedPort] | None:
        parts = (comment or "").split(":")
        if len(parts) != 6 or parts[0] != self.config.prefix or parts[2] not in ("tcp", "udp"):
            return None
        try:
            port = PublishedPort(IPv4Address(parts[3]), int(parts[4]), int(parts[5]), parts[2])  # type: ignore[arg-type]
        except ValueError:
            return None
        return parts[1], port

    def _spec(self, container_id: str, container_ip: IPv4Address, p: PublishedPort) -> str:
        dst = "" if p.host_ip == ANY_IP else f"-d {p.host_ip}/32 "
        return (f"{dst}-p {p.protocol} -m {p.protocol} --dport {p.host_port} "
                f"-m comment --comment {iptables.quote(self._comment(container_id, p))} "
                f"-j DNAT --to-destination {container_ip}:{p.container_port}")

    # Choosing host ports ----------------------------------------------------------
    def _taken(self, chosen: list[PublishedPort], protocol: str, ip: IPv4Address, port: int) -> bool:
        bound = (p for entries in self._bound.values() for p, _ in entries)
        return any(p.overlaps(protocol, ip, port) for p in (*bound, *chosen, *self.elsewhere()))

    def published(self) -> list[PublishedPort]:
        return [p for entries in self._bound.values() for p, _ in entries]

    def _choose(self, mappings: list[PortMapping]) -> tuple[list[PublishedPort], list[socket.socket]]:
        """The host port of each mapping, and the sockets holding them (the caller keeps or closes them)."""
        chosen: list[PublishedPort] = []
        held: list[socket.socket] = []
        try:
            for m in mappings:
                sock = self._choose_one(m, chosen)
                held.append(sock)
                chosen.append(PublishedPort(m.host_ip, sock.getsockname()[1], m.container_port, m.protocol))
        except BaseException:
            _close_all(held)
            raise
        return chosen, held

    def _choose_one(self, m: PortMapping, chosen: list[PublishedPort]) -> socket.socket:
        if m.host_ports is None:
            # The kernel's pick is free of host listeners; retry past our own ports.
            for _ in range(_PICK_ATTEMPTS):
                sock = _hold(m.protocol, m.host_ip, 0)
                if sock is None:
                    continue
                if not self._taken(chosen, m.protocol, m.host_ip, sock.getsockname()[1]):
                    return sock
                sock.close()
            raise Conflict(f"no free host port for {m}")
        lo, hi = m.host_ports
        for port in range(lo, hi + 1):
            if self._taken(chosen, m.protocol, m.host_ip, port):
                continue
            sock = _hold(m.protocol, m.host_ip, port)
            if sock is not None:
                return sock
        where = f"{m.host_ip}:{lo}" if lo == hi else f"{m.host_ip}:{lo}-{hi}"
        raise Conflict(f"host port {where}/{m.protocol} is already allocated")

    # Changing -----------------------------------------------------------------
    async def publish(self, container_id: str, container_ip: IPv4Address,
                      mappings: list[PortMapping]) -> list[PublishedPort]:
        """Add the container's DNAT rules in one batch; Conflict if a host port is taken."""
        async with self._lock:
            if container_id in self._bound:
                await self._unpublish(container_id)
            if not mappings:
                return []
            chosen, held = self._choose(mappings)
            entries = [(p, self._spec(container_id, container_ip, p)) for p in chosen]
            chain = self.config.dnat_chain
            try:
                await iptables.restore({"nat": [f"-A {chain} {spec}" for _, spec in entries]})
            except BaseException:
                _close_all(held)
                raise
            self._bound[container_id] = entries
            self._held[container_id] = held
            return chosen

    async def unpublish(self, container_id: str) -> None:
        async with self._lock:
            await self._unpublish(container_id)

    async def _unpublish(self, container_id: str) -> None:
        # The table is complete (load() rebuilds it after a restart): a container
        # absent from it has no rules, and tearing it down costs no iptables call.
        entries = self._bound.pop(container_id, None)
        _close_all(self._held.pop(container_id, ()))
        if not entries:
            return
        chain = self.config.dnat_chain
        try:
            await iptables.restore({"nat": [f"-D {chain} {spec}" for _, spec in entries]})
        except CommandFailed:
            # Some rule is gone already (a crash, a manual flush), which fails the
            # whole batch: delete whatever of this container's rules is still there.
            await self._delete_found({container_id})

    async def _delete_found(self, container_ids: set[str]) -> None:
        """Delete every rule of ours whose comment names one of the containers."""
        current = await iptables.save("nat")
        chain = self.config.dnat_chain
        lines = []
        for rule in current.in_table("nat"):
            found = self._parse_comment(rule.comment) if rule.chain == chain else None
            if found and found[0] in container_ids:
                lines.append(f"-D {chain} {rule.spec}")
        await iptables.restore({"nat": lines})

    async def load(self) -> dict[str, list[PublishedPort]]:
        """Rebuild the table of mappings from the rules in the kernel (agent restart)."""
        async with self._lock:
            current = await iptables.save("nat")
            bound: dict[str, list[tuple[PublishedPort, str]]] = {}
            for rule in current.in_table("nat"):
                found = self._parse_comment(rule.comment) if rule.chain == self.config.dnat_chain else None
                if found:
                    bound.setdefault(found[0], []).append((found[1], rule.spec))
            self._bound = bound
            for socks in self._held.values():
                _close_all(socks)
            # hold the ports again; one a host program took while no agent ran stays mapped (as it was)
            self._held = {cid: [s for p, _ in entries if (s := _hold_again(p))] for cid, entries in bound.items()}
            return {cid: [p for p, _ in entries] for cid, entries in bound.items()}

    async def forget_all(self) -> None:
        """Drop the in-memory table (the chain itself is flushed by the bridge)."""
        async with self._lock:
            self._bound.clear()
            for socks in self._held.values():
                _close_all(socks)
            self._held.clear()
