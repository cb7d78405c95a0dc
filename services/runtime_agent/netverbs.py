"""The agent's `network ...` verbs over the bus, and how its user networks are set up.

Settings: DOCKYARD_OVERLAY_POOL (where overlay subnets come from), DOCKYARD_NETWORK_POOL (CIDR the subnets of `network create` come from, default
10.89.0.0/16), DOCKYARD_NETWORK_POOL_SIZE (their prefix length, default 24) and
DOCKYARD_DNS_UPSTREAM (`IP[:PORT],...`, default the host's resolv.conf nameservers).
"""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import msgspec

from services.runtime_agent.network import Network
from services.runtime_agent.network.dns import DnsServer, host_resolvers, parse_upstreams
from services.runtime_agent.network.overlay import Overlays
from services.runtime_agent.network.usernet import Pool, UserNetworks
from shared import bus, subjects
from shared.config import Config
from shared.errors import Conflict, InvalidArgument
from shared.messages import networks as m
from shared.messages.agent import fleet


def user_networks(cfg: Config, network: Network, agent_id: str, state_dir: Path, nc=None) -> UserNetworks:
    """The agent's user networks, hooked into its Network (which then sets containers up on them)."""
    try:
        pool = Pool(IPv4Network(cfg.env("NETWORK_POOL", "10.89.0.0/16")), int(cfg.env("NETWORK_POOL_SIZE", "24")))
    except ValueError as e:
        raise InvalidArgument(f"DOCKYARD_NETWORK_POOL/_SIZE: {e}") from e
    upstream = cfg.env("DNS_UPSTREAM", "")
    holder: list[UserNetworks] = []
    dns = DnsServer(lambda nid, src, name: holder[0].lookup(nid, src, name),
                    parse_upstreams(upstream) if upstream else host_resolvers())
    ncfg = network.config
    user = UserNetworks(state_dir=state_dir, agent_id=agent_id, prefix=ncfg.prefix, default_bridge=ncfg.bridge,
                        default_subnet=ncfg.subnet, pool=pool, dns=dns)
    holder.append(user)
    network.user = user
    if nc is not None:  # overlays: DOCKYARD_OVERLAY_POOL (default 10.90.0.0/16, /24 each)
        try:
            opool = IPv4Network(cfg.env("OVERLAY_POOL", "10.90.0.0/16"))
        except ValueError as e:
            raise InvalidArgument(f"DOCKYARD_OVERLAY_POOL: {e}") from e
        user.overlays = Overlays(nc, agent_id, cfg.env("AGENT_ADDRESS", ""), opool)
    user.default_ports = network.ports
    network.ports.elsewhere = lambda: user._elsewhere(network.ports)
    return user


class NetworkVerbs:
    def __init__(self, agent_id: str, user: UserNetworks, network: Network, containers):
        self.id = agent_id
        self.user = user
        self.network = network
        self.containers = containers  # services.runtime_agent.containers.manager.Containers

    def register(self, svc: bus.BusService) -> None:
        own = f"{subjects.queue(subjects.RUNTIME_AGENT)}.{self.id}"
        verbs = [
            (m.VERB_NETWORK_CREATE, m.NetworkCreateRequest, self.create, {}),
            (m.VERB_NETWORK_LS, m.NetworkListRequest, self.ls, {"empty_ok": True}),
            (m.VERB_NETWORK_INSPECT, m.NetworkRef, self.inspect, {}),
            (m.VERB_NETWORK_RM, m.NetworkRef, self.rm, {}),
            (m.VERB_NETWORK_PRUNE, m.NetworkPruneRequest, self.prune, {}),
            (m.VERB_NETWORK_CONNECT, m.ConnectRequest, self.connect, {}),
            (m.VERB_NETWORK_DISCONNECT, m.DisconnectRequest, self.disconnect, {}),
        ]
        for verb, typ, handler, bounds in verbs:
            svc.endpoint(subjects.agent(self.id, verb), typ, handler, queue=own, **bounds)
        svc.endpoint(fleet(m.VERB_NETWORK_LS), m.NetworkListRequest, self.ls, queue=own, empty_ok=True)

    async def create(self, req: m.NetworkCreateRequest) -> m.NetworkReply:
        return m.NetworkReply(network=await self.user.create(req))

    async def ls(self, req: m.NetworkListRequest) -> m.NetworkListReply:
        return m.NetworkListReply(host=self.id, networks=self.user.list())

    async def inspect(self, req: m.NetworkRef) -> m.NetworkReply:
        return m.NetworkReply(network=self.user.get(req.network))

    async def rm(self, req: m.NetworkRef) -> m.NetworkReply:
        return m.NetworkReply(network=await self.user.remove(req.network))

    async def prune(self, req: m.NetworkPruneRequest) -> m.NetworkPruneReply:
        return m.NetworkPruneReply(host=self.id, removed=await self.user.prune(req.labels))

    async def connect(self, req: m.ConnectRequest) -> m.NetworkReply:
        rec = self.user.get(req.network)
        c = self.containers.inspect(req.container)
        async with self.containers._lock(c.id):
            c = self.containers.store.get(c.id)
            if c.config.network in ("host", "none"):
                raise Conflict(f"container {c.name} is on the {c.config.network} network: it cannot be "
                               "connected to another one")
            if any(e.network == rec.name for e in c.config.endpoints):
                raise Conflict(f"endpoint with name {c.name} already exists in network {rec.name}")
            ep = m.Endpoint(network=rec.name, aliases=list(req.aliases), ip=req.ip)
            net = c.network
            if c.state.status == "running":
                att = await self.network.connect(c.id, ep, c.name)
                net = msgspec.structs.replace(net, endpoints=list(att.endpoints))
            cfg = msgspec.structs.replace(c.config, endpoints=[*c.config.endpoints, ep])
            self.containers.store.save(msgspec.structs.replace(c, config=cfg, network=net))
        return m.NetworkReply(network=self.user.get(rec.id))

    async def disconnect(self, req: m.DisconnectRequest) -> m.NetworkReply:
        rec = self.user.get(req.network)
        c = self.containers.inspect(req.container)
        async with self.containers._lock(c.id):
            c = self.containers.store.get(c.id)
            left = [e for e in c.config.endpoints if e.network != rec.name]
            live = c.id in {x.id for x in rec.containers}
            if len(left) == len(c.config.endpoints) and not live:
                raise InvalidArgument(f"container {c.name} is not connected to network {rec.name}")
            net = c.network
            if live:
                att = await self.network.disconnect(c.id, rec.id)
                net = msgspec.structs.replace(net, endpoints=list(att.endpoints))
            mode = c.config.network
            if mode == rec.name:
                # Its --network is gone: the next start puts it on what is left, else nowhere.
                mode = left[0].network if left else "none"
            cfg = msgspec.structs.replace(c.config, endpoints=left, network=mode)
            self.containers.store.save(msgspec.structs.replace(c, config=cfg, network=net))
        return m.NetworkReply(network=self.user.get(rec.id))
