"""Container networking for the runtime-agent: a bridge, a netns per container, ports.

    net = Network(NetworkConfig(state_dir=...))
    await net.start()                     # the bridge, sysctls, chains (idempotent)
    await net.restore()                   # after an agent restart
    att = await net.setup(cid, "bridge", parse_publish_all(["8080:80"]))
    # OCI spec: linux.namespaces += {"type": "network", "path": att.netns_path}
    await net.teardown(cid)               # after the container is deleted
    await net.close(remove_all=False)

Set-up for a bridged container with published ports is one IP allocation (an
fsynced JSON write), two `ip -batch` processes and one `iptables-restore`, the
last running alongside the `ip` ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Literal

from services.runtime_agent.network.bridge import Bridge
from services.runtime_agent.network.config import NetworkConfig, check_container_id
from services.runtime_agent.network.ipam import Ipam
from services.runtime_agent.network.portmap import PortMapper
from services.runtime_agent.network.ports import (
    PortMapping,
    PublishedPort,
    parse_publish,
    parse_publish_all,
)
from services.runtime_agent.network.sandbox import Sandboxes
from shared.errors import InvalidArgument, Unavailable
from shared.messages.networks import Endpoint, EndpointInfo

__all__ = [
    "Attachment", "Mode", "Network", "NetworkConfig", "PortMapping", "PublishedPort",
    "parse_publish", "parse_publish_all",
]

Mode = Literal["bridge", "none", "host"]
MODES: tuple[Mode, ...] = ("bridge", "none", "host")


@dataclass(frozen=True, slots=True)
class Attachment:
    """How a container is attached. `netns_path` None: it shares the host's network."""

    container_id: str
    mode: Mode
    netns_path: str | None
    ip: IPv4Address | None = None
    prefixlen: int | None = None
    gateway: IPv4Address | None = None
    ports: tuple[PublishedPort, ...] = ()
    # networks: a container on user networks (mode "bridge", its own namespace): one per
    # network, eth0 first; `nameserver` is the embedded DNS its resolv.conf names.
    endpoints: tuple[EndpointInfo, ...] = ()
    nameserver: IPv4Address | None = None


class Network:
    def __init__(self, config: NetworkConfig):
        self.config = config
        self.bridge = Bridge(config)
        self.ipam = Ipam(config.ipam_path, config.subnet)
        self.sandboxes = Sandboxes(config)
        self.ports = PortMapper(config)
        self._attached: dict[str, Attachment] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self.user = None  # networks: a usernet.UserNetworks, set by the agent

    async def start(self) -> None:
        await self.bridge.ensure()

    async def __aenter__(self) -> Network:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def get(self, container_id: str) -> Attachment | None:
        return self._attached.get(container_id)

    def attachments(self) -> dict[str, Attachment]:
        return dict(self._attached)

    @contextlib.asynccontextmanager
    async def _locked(self, container_id: str) -> AsyncIterator[None]:
        """Serialise set-up and teardown of one container; others run in parallel."""
        lock, users = self._locks.get(container_id, (asyncio.Lock(), 0))
        self._locks[container_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[container_id]
            if users == 1:
                del self._locks[container_id]
            else:
                self._locks[container_id] = (lock, users - 1)

    async def setup(self, container_id: str, mode: Mode = "bridge",
                    publish: Sequence[PortMapping] = (), *, endpoints: Sequence[Endpoint] = (),
                    name: str = "") -> Attachment:
        """Give the container its network; a repeated call redoes it from scratch.

        With `endpoints` (user networks) `mode` is ignored: the container gets a
        namespace of its own with one interface per network; `name` is its DNS name.
        """
        check_container_id(container_id)
        if endpoints and mode not in ("none", "host"):
            return await self._setup_user(container_id, list(endpoints), list(publish), name,
                                          bridged=mode == "bridge")
        if mode not in MODES:
            raise InvalidArgument(f"unknown network mode {mode!r} (bridge, none, host)")
        if publish and mode != "bridge":
            # docker warns and drops them; an API caller is better told.
            raise InvalidArgument(f"ports cannot be published with network mode {mode}")
        async with self._locked(container_id):
            if self._has_any(container_id):
                # A retried or changed set-up: start from nothing, so no address,
                # rule or namespace of the earlier attempt lingers.
                await self._teardown(container_id)
            if mode == "host":
                att = Attachment(container_id, "host", None)
            elif mode == "none":
                path = await self.sandboxes.create_isolated(container_id)
                att = Attachment(container_id, "none", path)
            else:
                att = await self._setup_bridged(container_id, list(publish))
            self._attached[container_id] = att
            return att

    def _has_any(self, cid: str) -> bool:
        return (cid in self._attached or self.ipam.get(cid) is not None
                or bool(self.ports.ports(cid)) or self.sandboxes.exists(cid)
                or (self.user is not None and bool(self.user.endpoints_of(cid))))

    async def _setup_user(self, cid: str, endpoints: list[Endpoint], publish: list[PortMapping],
                          name: str, *, bridged: bool) -> Attachment:
        """On user networks; `bridged`: on the default bridge first (eth0), connected to them later."""
        if self.user is None:
            raise Unavailable("this agent has no user networks")
        async with self._locked(cid):
            if self._has_any(cid):
                await self._teardown(cid)
            base = await self._setup_bridged(cid, publish) if bridged else None
            path = base.netns_path if base is not None else await self.sandboxes.create_isolated(cid)
            infos = []
            try:
                for i, ep in enumerate(endpoints):
                    primary = i == 0 and base is None
                    infos.append(await self.user.attach(cid, self.config.netns_name(cid), ep,
                                                        container_name=name or cid[:12], primary=primary,
                                                        publish=publish if primary else ()))
            except BaseException:
                await self._teardown(cid)
                raise
            att = _user_attachment(cid, path, tuple(infos), tuple(self.user.ports(cid)))
            if base is not None:
                att = dataclasses.replace(base, endpoints=att.endpoints, nameserver=att.nameserver)
            self._attached[cid] = att
            return att

    async def connect(self, cid: str, ep: Endpoint, name: str) -> Attachment:
        """`network connect` of a running container: one more interface, live."""
        if self.user is None:
            raise Unavailable("this agent has no user networks")
        async with self._locked(cid):
            if not self.sandboxes.exists(cid):
                raise InvalidArgument(f"container {cid[:12]} has no network namespace of its own")
            await self.user.attach(cid, self.config.netns_name(cid), ep, container_name=name, primary=False)
            att = self._refresh_user(cid)
            return att

    async def disconnect(self, cid: str, network: str) -> Attachment:
        if self.user is None:
            raise Unavailable("this agent has no user networks")
        async with self._locked(cid):
            await self.user.detach(cid, network)
            return self._refresh_user(cid)

    def _refresh_user(self, cid: str) -> Attachment:
        old = self._attached.get(cid)
        infos = tuple(self.user.info(cid)) if self.user is not None else ()
        att = _user_attachment(cid, str(self.config.netns_path(cid)), infos, tuple(self.user.ports(cid)))
        if old is not None and self.ipam.get(cid) is not None:
            # the default bridge's container: its eth0 stays as it was
            att = dataclasses.replace(old, endpoints=infos, nameserver=att.nameserver)
        self._attached[cid] = att
        return att

    async def _setup_bridged(self, cid: str, publish: list[PortMapping]) -> Attachment:
        ip = await self.ipam.allocate(cid)
        # The rules name the address, not the interface: apply them alongside.
        sandbox = asyncio.ensure_future(
            self.sandboxes.create_bridged(cid, self.ipam.interface(ip), self.ipam.gateway))
        rules = asyncio.ensure_future(self.ports.publish(cid, ip, publish))
        try:
            await asyncio.wait((sandbox, rules))
        except asyncio.CancelledError:
            # Let both finish, then undo them: a cancelled set-up leaves nothing.
            await asyncio.gather(sandbox, rules, return_exceptions=True)
            await self._teardown(cid)
            raise
        errors = [e for e in (sandbox.exception(), rules.exception()) if e is not None]
        if errors:
            with contextlib.suppress(Exception):
                await self._teardown(cid)
            raise errors[0]
        return Attachment(cid, "bridge", sandbox.result(), ip, self.config.subnet.prefixlen,
                          self.ipam.gateway, tuple(rules.result()))

    async def teardown(self, container_id: str) -> None:
        """Remove the container's netns, veth, rules and address; repeating is fine."""
        check_container_id(container_id)
        async with self._locked(container_id):
            await self._teardown(container_id)

    async def _teardown(self, cid: str) -> None:
        results = await asyncio.gather(
            self.ports.unpublish(cid), self.sandboxes.remove(cid), return_exceptions=True
        )
        self._attached.pop(cid, None)
        # Keep the address while its namespace lives on: the two must agree.
        if not self.sandboxes.exists(cid):
            await self.ipam.release(cid)
            if self.user is not None:
                await self.user.detach_all(cid)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def restore(self, keep: Iterable[str] | None = None) -> dict[str, Attachment]:
        """Reconcile with the host after an agent restart; return the live attachments.

        Addresses and rules whose namespace is gone are released. With `keep` (the
        containers the agent still knows), everything of any other container goes.
        """
        await self.bridge.ensure()
        rules = await self.ports.load()
        alive = set(self.sandboxes.list_ids())
        known = alive | set(self.ipam.allocations()) | set(rules)
        doomed = known - alive
        if keep is not None:
            doomed |= known - set(keep)
        for cid in sorted(doomed):
            async with self._locked(cid):
                await self._teardown(cid)
        if self.user is not None:
            await self.user.restore(known - doomed)
        self._attached = {}
        for cid in sorted(known - doomed):
            ip = self.ipam.get(cid)
            if self.user is not None and self.user.endpoints_of(cid) and ip is None:
                att = _user_attachment(cid, str(self.config.netns_path(cid)), tuple(self.user.info(cid)),
                                       tuple(self.user.ports(cid)))
            elif ip is None:
                att = Attachment(cid, "none", str(self.config.netns_path(cid)))
            else:
                att = Attachment(cid, "bridge", str(self.config.netns_path(cid)), ip,
                                 self.config.subnet.prefixlen, self.ipam.gateway,
                                 tuple(self.ports.ports(cid)))
            self._attached[cid] = att
        return dict(self._attached)

    async def close(self, remove_all: bool = False) -> None:
        """Stop managing; with remove_all, also remove every container's network,
        the bridge, the chains and the IPAM state (containers outlive a plain close)."""
        if not remove_all:
            return
        known = (set(self.sandboxes.list_ids()) | set(self.ipam.allocations())
                 | set(self.ports.containers()) | set(self._attached))
        for cid in sorted(known):
            async with self._locked(cid):
                await self._teardown(cid)
        await self.ports.forget_all()
        await self.bridge.teardown()
        self.ipam.remove_file()


def _user_attachment(cid: str, path: str, infos: tuple[EndpointInfo, ...],
                     ports: tuple[PublishedPort, ...] = ()) -> Attachment:
    """A container on user networks: its eth0's address, and the DNS on that network's gateway."""
    first = next((i for i in infos if i.interface == "eth0"), infos[0] if infos else None)
    if first is None:
        return Attachment(cid, "none", path)
    gw = IPv4Address(first.gateway)
    return Attachment(cid, "bridge", path, IPv4Address(first.ip), first.prefixlen, gw, ports, infos, gw)
