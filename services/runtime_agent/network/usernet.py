"""User networks on one agent: `network create/ls/inspect/rm/prune`, and containers on them.

Each network is its own Linux bridge and subnet (userbridge.py), its own address
allocator (ipam.py) and a DNS listener on its gateway (dns.py). A container on user
networks has a namespace of its own (the agent's `none` sandbox) with one veth per
network: eth0 for the first (with the default route unless it is internal), eth1, ...
for those connected later. The records are the agent's (netstate.py); the bridges and
chains are rebuilt from them on every start and removed when an idle agent stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import msgspec

from services.runtime_agent.network import netstate
from services.runtime_agent.network._exec import ip_batch
from services.runtime_agent.network.bridge import link_exists
from services.runtime_agent.network.config import NetworkConfig
from services.runtime_agent.network.dns import DNS_PORT, DnsServer
from services.runtime_agent.network.ipam import Ipam
from services.runtime_agent.network.netnames import (NAME, Pool, address_in, b36, check_network_name, del_link,
                                                     gateway_of, mac_of, routed)
from services.runtime_agent.network.netstate import EndpointState, State
from services.runtime_agent.network.overlay import MTU as OVERLAY_MTU
from services.runtime_agent.network.overlay import Overlays, gateway_mac
from services.runtime_agent.network.portmap import PortMapper
from services.runtime_agent.network.ports import PortMapping, PublishedPort
from services.runtime_agent.network.userbridge import UserBridge
from shared.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, Unavailable
from shared.messages.networks import (BUILTIN_NETWORKS, DRIVERS, Endpoint, EndpointInfo, NetworkContainer,
                                      NetworkCreateRequest, NetworkRecord)

log = logging.getLogger("dockyard.agent.networks")

_PEER_REFRESH = 5.0  # seconds between updates of an overlay's flood list


class _Net:
    """A network's live parts."""

    def __init__(self, record: NetworkRecord, config: NetworkConfig, bridge: UserBridge, ipam: Ipam):
        self.record = record
        self.config = config
        self.bridge = bridge
        self.ipam = ipam
        self.ports = PortMapper(config)  # the DNAT chain is the bridge's


class UserNetworks:
    def __init__(self, *, state_dir: Path, agent_id: str, prefix: str, default_bridge: str,
                 default_subnet: IPv4Network, pool: Pool = Pool(), dns: DnsServer | None = None,
                 dns_port: int = DNS_PORT):
        self.state_dir = state_dir
        self.agent_id = agent_id
        self.default_bridge = default_bridge
        self.default_subnet = default_subnet
        self.pool = pool
        self.dns = dns
        self.dns_port = dns_port
        self.path = state_dir / "networks.json"
        # Every name of ours starts with a hash of the agent's prefix: two agents on one
        # host (tests, a fleet in namespaces) never touch each other's bridges.
        self._tag = "dy" + hashlib.sha256(prefix.encode()).hexdigest()[:6]
        self._state = State()
        self._nets: dict[str, _Net] = {}
        self._lock = asyncio.Lock()
        self.default_ports: PortMapper | None = None  # the default bridge's: one host port space
        self.overlays: Overlays | None = None  # `--driver overlay`, when the agent has the bus's KV
        self._refresher: asyncio.Future | None = None

    def _elsewhere(self, mine: PortMapper):
        mappers = [n.ports for n in self._nets.values()] + ([self.default_ports] if self.default_ports else [])
        return [p for m in mappers if m is not None and m is not mine for p in m.published()]

    # ---- names -----------------------------------------------------------------------

    @property
    def siblings(self) -> str:
        """The iptables interface pattern matching every user bridge of this agent."""
        return f"{self._tag}-+"

    def _veth(self, network_id: str, container_id: str) -> str:
        return f"{self._tag[:4]}u" + hashlib.sha256(f"{network_id}/{container_id}".encode()).hexdigest()[:10]

    def _live(self, record: NetworkRecord) -> _Net:
        n = int(record.bridge.rsplit("-", 1)[1], 36)
        subnet = IPv4Network(record.subnet)
        gw = IPv4Address(record.gateway)
        custom = gw if gw != subnet.network_address + 1 else None
        cfg = NetworkConfig(state_dir=self.state_dir, bridge=record.bridge, subnet=subnet,
                            prefix=f"{self._tag}n{b36(n)}", gateway_address=custom,
                            mac=gateway_mac(record.id) if record.driver == "overlay" else "")
        net = _Net(record, cfg, UserBridge(cfg, internal=record.internal, siblings=self.siblings,
                                           default_bridge=self.default_bridge),
                   Ipam(cfg.ipam_path, subnet, custom))
        net.ports.elsewhere = lambda: self._elsewhere(net.ports)
        return net

    # ---- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild every network's bridge, chains and DNS listener (after a restart too)."""
        self._state = await asyncio.to_thread(netstate.load, self.path)
        self._nets = {}
        for rec in self._state.networks:
            net = self._live(rec)
            await net.bridge.ensure()
            await net.ports.load()
            if rec.driver == "overlay" and self.overlays is not None:
                try:
                    await self.overlays.ensure_vxlan(rec.bridge, rec.vni)
                except Exception as e:  # noqa: BLE001 - the bus may come later: the refresher retries
                    log.warning("overlay %s: %s", rec.name, e)
            try:
                await self._listen(net)
            except Unavailable as e:  # the network works, only its names do not
                log.warning("network %s: %s", rec.name, e.message)
            self._nets[rec.id] = net
        if self.overlays is not None and self._refresher is None:
            self._refresher = asyncio.ensure_future(self._refresh_overlays())

    async def _refresh_overlays(self) -> None:
        """Agents come and go: keep each overlay's flood list to the live ones."""
        while True:
            await asyncio.sleep(_PEER_REFRESH)
            for net in list(self._nets.values()):
                if net.record.driver == "overlay" and self.overlays is not None:
                    try:
                        await self.overlays.ensure_vxlan(net.record.bridge, net.record.vni)
                    except Exception as e:  # noqa: BLE001 - tried again next round
                        log.warning("overlay %s: %s", net.record.name, e)

    async def _listen(self, net: _Net) -> None:
        if self.dns is not None:
            await self.dns.listen(net.record.id, net.config.gateway, internal=net.record.internal,
                                  port=self.dns_port, subnet=net.config.subnet)

    async def close(self, remove_all: bool = False) -> None:
        """Stop answering DNS; with remove_all also remove the bridges and chains (the records stay)."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        for nid, net in self._nets.items():
            if self.dns is not None:
                await self.dns.unlisten(nid)
            if remove_all:
                await net.ports.forget_all()
                await self._unplug_bridge(net)
                net.ipam.remove_file()

    async def _save(self) -> None:
        await asyncio.to_thread(netstate.save, self.path, self._state)

    # ---- queries ---------------------------------------------------------------------

    def get(self, ref: str) -> NetworkRecord:
        """A network by name, full id or unique id prefix."""
        recs = self._state.networks
        for r in recs:
            if r.name == ref or r.id == ref:
                return self._with_containers(r)
        hits = [r for r in recs if ref and r.id.startswith(ref)]
        if len(hits) == 1:
            return self._with_containers(hits[0])
        if len(hits) > 1:
            raise InvalidArgument(f"network {ref} is ambiguous ({len(hits)} matches)")
        raise NotFound(f"network {ref} not found")

    def list(self) -> list[NetworkRecord]:
        return [self._with_containers(r) for r in self._state.networks]

    def _with_containers(self, r: NetworkRecord) -> NetworkRecord:
        eps = self._state.endpoints.get(r.id, {})
        plen = IPv4Network(r.subnet).prefixlen
        members = [NetworkContainer(id=cid, name=e.container_name, ip=e.ip, prefixlen=plen, mac=e.mac,
                                    aliases=list(e.aliases)) for cid, e in sorted(eps.items())]
        return msgspec.structs.replace(r, containers=members)

    def endpoints_of(self, container_id: str) -> dict[str, EndpointState]:
        """network id -> endpoint, for every network the container is on."""
        return {nid: m[container_id] for nid, m in self._state.endpoints.items() if container_id in m}

    def lookup(self, network_id: str, source: IPv4Address, name: str) -> list[IPv4Address] | None:
        """The DNS answer for `name` asked from `source` on a network (dns.Lookup)."""
        eps = self._state.endpoints
        src = str(source)
        asker = next((cid for cid, e in eps.get(network_id, {}).items() if e.ip == src), None)
        nets = [network_id]
        if asker is not None:
            nets += [nid for nid, m in eps.items() if asker in m and nid != network_id]
        for nid in nets:
            hits = [IPv4Address(e.ip) for e in eps.get(nid, {}).values() if name in e.names]
            if hits:
                return hits
        overlays = [nid for nid in nets if nid in self._nets and self._nets[nid].record.driver == "overlay"]
        if overlays and self.overlays is not None:
            return self._overlay_lookup(overlays, name)  # containers of other hosts: from the bus
        return None

    async def _overlay_lookup(self, network_ids: list[str], name: str) -> list[IPv4Address] | None:
        for nid in network_ids:
            try:
                hits = (await self.overlays.names(nid)).get(name)
            except Exception as e:  # noqa: BLE001 - the bus away: forward as an unknown name
                log.warning("overlay names: %s", e)
                return None
            if hits:
                return hits
        return None

    # ---- create / remove ---------------------------------------------------------------

    async def create(self, req: NetworkCreateRequest) -> NetworkRecord:
        name = check_network_name(req.name)
        if req.driver not in DRIVERS:
            raise InvalidArgument(f"network driver {req.driver!r} is not supported here ({', '.join(DRIVERS)})")
        async with self._lock:
            if any(r.name == name for r in self._state.networks):
                raise AlreadyExists(f"network with name {name} already exists")
            n = self._state.counter + 1
            if req.driver == "overlay":
                rec = await self._overlay_record(req, name, f"{self._tag}-{b36(n)}")
            else:
                subnet = await self._subnet(req.subnet)
                gateway = gateway_of(subnet, req.gateway)
                rec = NetworkRecord(id=secrets.token_hex(32), name=name, driver=req.driver, subnet=str(subnet),
                                    gateway=str(gateway), internal=req.internal, labels=dict(req.labels),
                                    created=_now(), host=self.agent_id, bridge=f"{self._tag}-{b36(n)}")
            net = self._live(rec)
            try:
                await net.bridge.ensure()
                if rec.driver == "overlay" and self.overlays is not None:
                    await self.overlays.ensure_vxlan(rec.bridge, rec.vni)
                await self._listen(net)
                self._state.counter = n
                self._state.networks.append(rec)
                await self._save()
            except BaseException:
                self._state.networks = [r for r in self._state.networks if r.id != rec.id]
                if self.dns is not None:
                    await self.dns.unlisten(rec.id)
                await self._unplug_bridge(net)
                raise
            self._nets[rec.id] = net
            return rec

    async def _overlay_record(self, req: NetworkCreateRequest, name: str, bridge: str) -> NetworkRecord:
        """The fleet's definition of an overlay (the first agent asked makes it), as a local record."""
        if self.overlays is None:
            raise InvalidArgument("overlay networks need the bus's key-value store")
        if req.subnet:
            await self._subnet(req.subnet)  # a clear error before the fleet records it
        o = await self.overlays.define(name, req.subnet, req.gateway, req.internal, dict(req.labels), _now())
        taken = [IPv4Network(r.subnet) for r in self._state.networks] + [self.default_subnet]
        if any(IPv4Network(o.subnet).overlaps(t) for t in taken):
            raise Conflict(f"overlay {name}'s subnet {o.subnet} overlaps a network of this host")
        return NetworkRecord(id=o.id, name=name, driver="overlay", subnet=o.subnet, gateway=o.gateway,
                             internal=o.internal, labels=o.labels, created=o.created, host=self.agent_id,
                             bridge=bridge, vni=o.vni)

    async def _unplug_bridge(self, net: _Net) -> None:
        if net.record.driver == "overlay" and self.overlays is not None:
            await del_link(self.overlays.vxlan_name(net.record.bridge))
        await net.bridge.teardown()

    async def _subnet(self, text: str) -> IPv4Network:
        taken = [IPv4Network(r.subnet) for r in self._state.networks] + [self.default_subnet]
        if text:
            try:
                subnet = IPv4Network(text, strict=True)
            except ValueError as e:
                raise InvalidArgument(f"invalid subnet {text!r}: {e}") from e
            if subnet.prefixlen > 29:
                raise InvalidArgument(f"subnet {subnet} is too small (at most /29)")
            for t in taken:
                if subnet.overlaps(t):
                    raise Conflict(f"invalid pool request: pool {subnet} overlaps with other one on this "
                                   f"address space ({t})")
            return subnet
        routes = await routed()
        for cand in self.pool.candidates():
            if not any(cand.overlaps(t) for t in taken + routes):
                return cand
        raise Conflict(f"all predefined address pools have been fully subnetted ({self.pool.base})")

    async def remove(self, ref: str) -> NetworkRecord:
        async with self._lock:
            rec = self.get(ref)
            if rec.containers:
                names = ", ".join(c.name or c.id[:12] for c in rec.containers)
                raise Conflict(f"error while removing network: network {rec.name} has active endpoints "
                               f"({names})")
            net = self._nets.pop(rec.id, None) or self._live(rec)
            if self.dns is not None:
                await self.dns.unlisten(rec.id)
            await self._unplug_bridge(net)
            net.ipam.remove_file()
            if rec.driver == "overlay" and self.overlays is not None:
                await self.overlays.undefine(rec.name, rec.id)
            self._state.networks = [r for r in self._state.networks if r.id != rec.id]
            self._state.endpoints.pop(rec.id, None)
            await self._save()
            return rec

    async def prune(self, labels: dict[str, str] | None = None) -> list[str]:
        """Remove every network no container is on (with all of `labels`); their names."""
        gone = []
        for rec in self.list():
            if rec.containers or any(rec.labels.get(k) != v for k, v in (labels or {}).items()):
                continue
            try:
                await self.remove(rec.id)
            except Conflict:
                continue  # a container joined meanwhile
            gone.append(rec.name)
        return gone

    # ---- containers ------------------------------------------------------------------

    async def attach(self, container_id: str, netns: str, ep: Endpoint, *, container_name: str,
                     primary: bool, publish: Sequence[PortMapping] = ()) -> EndpointInfo:
        """Give the container (whose namespace is `netns`) an interface on `ep.network`,
        and publish `publish` to its address there."""
        rec = self.get(ep.network)
        net = self._nets[rec.id]
        if publish and rec.internal:
            raise InvalidArgument(f"ports cannot be published on internal network {rec.name}")
        aliases = [a for a in dict.fromkeys(ep.aliases) if a]
        for a in aliases:
            if not NAME.fullmatch(a):
                raise InvalidArgument(f"invalid network alias {a!r}")
        want = address_in(rec, ep.ip) if ep.ip else None
        async with self._lock:
            if container_id in self._state.endpoints.get(rec.id, {}):
                raise Conflict(f"endpoint with name {container_name} already exists in network {rec.name}")
            used = {e.interface for e in self.endpoints_of(container_id).values()}
            # eth0 is the first network's (a default-bridge container's own, if connected later)
            ifname = "eth0" if primary and "eth0" not in used else next(
                f"eth{i}" for i in range(1, 64) if f"eth{i}" not in used)
            names = [x.lower() for x in dict.fromkeys([container_name, container_id[:12], *aliases]) if x]
            if rec.driver == "overlay" and self.overlays is not None:
                ip = await self.overlays.claim(rec.id, IPv4Network(rec.subnet), IPv4Address(rec.gateway),
                                               container_id, names, want)
                await self.overlays.refresh_peers(rec.bridge)
            else:
                ip = await net.ipam.allocate(container_id, want)
            veth = self._veth(rec.id, container_id)
            state = EndpointState(container_name=container_name, aliases=aliases, names=names,
                                  ip=str(ip), mac=mac_of(ip), interface=ifname, veth=veth)
            try:
                # The rules name the address, not the interface: made alongside.
                await asyncio.gather(
                    self._plug(net, netns, state, default_route=ifname == "eth0" and not rec.internal),
                    net.ports.publish(container_id, ip, list(publish)))
            except BaseException:
                await asyncio.gather(del_link(veth), net.ports.unpublish(container_id), return_exceptions=True)
                await self._release(net, container_id, ip)
                raise
            self._state.endpoints.setdefault(rec.id, {})[container_id] = state
            await self._save()
        return self._info(rec, state)

    async def _plug(self, net: _Net, netns: str, e: EndpointState, *, default_route: bool) -> None:
        if link_exists(e.veth):
            await del_link(e.veth)  # a crashed earlier attempt's
        mtu = f" mtu {OVERLAY_MTU}" if net.record.driver == "overlay" else ""
        await ip_batch([
            f"link add {e.veth}{mtu} type veth peer name {e.interface} address {e.mac}{mtu} netns {netns}",
            f"link set {e.veth} master {net.config.bridge} up",
        ])
        inside = [
            f"addr add {IPv4Interface(f'{e.ip}/{net.config.subnet.prefixlen}')} dev {e.interface}",
            f"link set {e.interface} up",
        ]
        if default_route:
            inside.append(f"route add default via {net.config.gateway} dev {e.interface}")
        try:
            await ip_batch(inside, netns=netns)
        except BaseException:
            await del_link(e.veth)
            raise

    def info(self, container_id: str) -> list[EndpointInfo]:
        """The container's endpoints, eth0 first."""
        out = []
        for nid, e in self.endpoints_of(container_id).items():
            net = self._nets.get(nid)
            if net is not None:
                out.append(self._info(net.record, e))
        return sorted(out, key=lambda i: int(i.interface[3:]) if i.interface[3:].isdigit() else 99)

    def _info(self, rec: NetworkRecord, e: EndpointState) -> EndpointInfo:
        return EndpointInfo(network=rec.name, network_id=rec.id, ip=e.ip,
                            prefixlen=IPv4Network(rec.subnet).prefixlen, gateway=rec.gateway, mac=e.mac,
                            interface=e.interface, aliases=list(e.names))

    async def detach(self, container_id: str, ref: str) -> NetworkRecord:
        """Take a live container off a network: its interface goes at once."""
        rec = self.get(ref)
        async with self._lock:
            e = self._state.endpoints.get(rec.id, {}).get(container_id)
            if e is None:
                raise NotFound(f"container {container_id[:12]} is not connected to network {rec.name}")
            await del_link(e.veth)
            await self._forget(rec.id, container_id)
            await self._save()
        return self.get(rec.id)

    async def detach_all(self, container_id: str) -> None:
        """Release every endpoint of a container whose namespace is gone (or going, with its veths)."""
        async with self._lock:
            nids = list(self.endpoints_of(container_id))
            for nid in nids:
                await self._forget(nid, container_id)
            if nids:
                await self._save()

    async def _forget(self, network_id: str, container_id: str) -> None:
        e = self._state.endpoints.get(network_id, {}).pop(container_id, None)
        net = self._nets.get(network_id)
        if net is not None:
            await net.ports.unpublish(container_id)
            await self._release(net, container_id, IPv4Address(e.ip) if e is not None else None)

    async def _release(self, net: _Net, container_id: str, ip: IPv4Address | None) -> None:
        if net.record.driver == "overlay" and self.overlays is not None:
            if ip is not None:
                await self.overlays.release(net.record.id, ip, container_id)
        else:
            await net.ipam.release(container_id)

    def ports(self, container_id: str) -> list[PublishedPort]:
        """The host ports published to the container on any user network."""
        return [p for nid in self.endpoints_of(container_id) if nid in self._nets
                for p in self._nets[nid].ports.ports(container_id)]

    async def restore(self, alive: set[str]) -> None:
        """After an agent restart: forget the endpoints of containers whose namespace is gone."""
        async with self._lock:
            doomed = [(nid, cid) for nid, m in self._state.endpoints.items() for cid in m if cid not in alive]
            for nid, cid in doomed:
                await self._forget(nid, cid)
            if doomed:
                await self._save()


def run_endpoints(user: UserNetworks | None, network: str, aliases: list[str], ip: str) -> list[Endpoint]:
    """`run --network N --network-alias A --ip IP` as the container's endpoints ([] for a built-in one)."""
    if network in BUILTIN_NETWORKS:
        if aliases:
            raise InvalidArgument("network-scoped aliases are supported only for containers in user "
                                  "defined networks")
        if ip:
            raise InvalidArgument("user specified IP address is supported on user defined networks only")
        return []
    if user is None:
        raise NotFound(f"network {network} not found")
    rec = user.get(network)
    if ip:
        address_in(rec, ip)
    for a in aliases:
        if not NAME.fullmatch(a):
            raise InvalidArgument(f"invalid network alias {a!r}")
    return [Endpoint(network=rec.name, aliases=list(aliases), ip=ip)]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
