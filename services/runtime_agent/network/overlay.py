"""`--driver overlay`: one network across the fleet's hosts, over Linux VXLAN.

What the hosts must agree on lives in the bus's KV bucket `dockyard-networks`:

- `net.<name>`: the network (id, subnet, gateway, VNI), created with compare-and-set by
  whichever agent is asked first; every other agent adopts it;
- `ip.<network id>.<a-b-c-d>`: one key per address in use, created with compare-and-set
  (two hosts never hand out one address), naming the container and its DNS names, so
  every host's embedded DNS answers for containers on every host.

On each host the network is a bridge like a local user network's, plus a VXLAN device
(VNI from the record, UDP 4789) on it whose flood entries name every other agent's
address (from the heartbeats). The gateway address and the bridge's MAC are the same on
every host (an anycast gateway): a container's DNS and its way out are its own host's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import time
from ipaddress import IPv4Address, IPv4Network

import msgspec

from services.runtime_agent.network._exec import CommandFailed, ip_batch, run
from services.runtime_agent.network.bridge import link_exists
from shared import subjects
from shared.bus import TypedKV, kv_bucket
from shared.errors import AlreadyExists, Conflict, Unavailable

log = logging.getLogger("dockyard.agent.overlay")

VXLAN_PORT = 4789
MTU = 1450  # the hosts' 1500 less VXLAN's 50 bytes
_NAMES_TTL = 1.0  # seconds a host's view of the other hosts' names may lag


class OverlayRecord(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    name: str
    subnet: str
    gateway: str
    vni: int
    internal: bool = False
    labels: dict[str, str] = {}
    created: str = ""


class AddressClaim(msgspec.Struct, kw_only=True, frozen=True):
    container: str
    agent: str
    names: list[str] = []


def _ip_key(network_id: str, ip: IPv4Address) -> str:
    return f"ip.{network_id}.{str(ip).replace('.', '-')}"


def gateway_mac(network_id: str) -> str:
    h = hashlib.sha256(f"overlay-gw/{network_id}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *h[:5]))


class Overlays:
    def __init__(self, nc, agent_id: str, address: str, pool: IPv4Network = IPv4Network("10.90.0.0/16"),
                 size: int = 24):
        self.nc = nc
        self.agent_id = agent_id
        self.address = address  # this host's VTEP: the address other agents reach it at
        self.pool = pool
        self.size = size
        self._nets: TypedKV | None = None
        self._claims: TypedKV | None = None
        self._cache: dict[str, tuple[float, dict[str, list[IPv4Address]]]] = {}

    async def _open(self) -> tuple[TypedKV, TypedKV]:
        if self._nets is None:
            kv = await kv_bucket(self.nc, subjects.KV_NETWORKS, description="overlay networks and addresses")
            self._nets, self._claims = TypedKV(kv, OverlayRecord), TypedKV(kv, AddressClaim)
        return self._nets, self._claims

    # ---- the network's definition -------------------------------------------------------

    async def define(self, name: str, subnet: str, gateway: str, internal: bool,
                     labels: dict[str, str], created: str) -> OverlayRecord:
        """The fleet's record of `name`: the existing one, else a new one (first writer wins)."""
        nets, _ = await self._open()
        got = await nets.get(f"net.{name}")
        if got is not None:
            return got[0]
        taken = [IPv4Network(r.subnet) for r in await self._all(nets)]
        net = IPv4Network(subnet) if subnet else next(
            (c for c in self.pool.subnets(new_prefix=self.size) if not any(c.overlaps(t) for t in taken)), None)
        if net is None:
            raise Conflict(f"no free overlay subnet left in {self.pool}")
        nid = secrets.token_hex(32)
        gw = IPv4Address(gateway) if gateway else net.network_address + 1
        rec = OverlayRecord(id=nid, name=name, subnet=str(net), gateway=str(gw),
                            vni=int(nid[:6], 16) or 1, internal=internal, labels=labels, created=created)
        try:
            await nets.create(f"net.{name}", rec)
        except AlreadyExists:
            got = await nets.get(f"net.{name}")
            if got is None:
                raise Unavailable(f"overlay {name} changed concurrently: try again") from None
            return got[0]
        return rec

    async def _all(self, nets: TypedKV) -> list[OverlayRecord]:
        out = []
        for k in await nets.keys("net."):
            got = await nets.get(k)
            if got is not None:
                out.append(got[0])
        return out

    async def undefine(self, name: str, network_id: str) -> None:
        nets, claims = await self._open()
        got = await nets.get(f"net.{name}")
        if got is not None and got[0].id == network_id:
            if await claims.keys(f"ip.{network_id}."):
                return  # containers on other hosts still use it: the last host's rm removes it
            await nets.delete(f"net.{name}", last=got[1])

    # ---- addresses ------------------------------------------------------------------------

    async def claim(self, rec_id: str, subnet: IPv4Network, gateway: IPv4Address, container_id: str,
                    names: list[str], want: IPv4Address | None) -> IPv4Address:
        _, claims = await self._open()
        claim = AddressClaim(container=container_id, agent=self.agent_id, names=names)
        if want is not None:
            try:
                await claims.create(_ip_key(rec_id, want), claim)
            except AlreadyExists as e:
                raise Conflict(f"address {want} is already in use on {subnet}") from e
            return want
        # Start where this host's hash points, so hosts seldom race for the same address.
        hosts = list(subnet.hosts())
        start = int(hashlib.sha256(f"{self.agent_id}/{container_id}".encode()).hexdigest(), 16) % len(hosts)
        for i in range(len(hosts)):
            ip = hosts[(start + i) % len(hosts)]
            if ip == gateway:
                continue
            try:
                await claims.create(_ip_key(rec_id, ip), claim)
                self._cache.pop(rec_id, None)
                return ip
            except AlreadyExists:
                continue
        raise Unavailable(f"no free address left in {subnet}")

    async def release(self, rec_id: str, ip: IPv4Address, container_id: str) -> None:
        _, claims = await self._open()
        key = _ip_key(rec_id, ip)
        got = await claims.get(key)
        if got is not None and got[0].container == container_id:
            try:
                await claims.delete(key, last=got[1])
            except Conflict:
                pass
        self._cache.pop(rec_id, None)

    async def names(self, rec_id: str) -> dict[str, list[IPv4Address]]:
        """name -> addresses of every container on the network, on every host (briefly cached)."""
        cached = self._cache.get(rec_id)
        if cached is not None and time.monotonic() - cached[0] < _NAMES_TTL:
            return cached[1]
        _, claims = await self._open()
        table: dict[str, list[IPv4Address]] = {}
        for k in await claims.keys(f"ip.{rec_id}."):
            got = await claims.get(k)
            if got is None:
                continue
            ip = IPv4Address(k.rsplit(".", 1)[1].replace("-", "."))
            for n in got[0].names:
                table.setdefault(n, []).append(ip)
        self._cache[rec_id] = (time.monotonic(), table)
        return table

    # ---- the host's VXLAN device ----------------------------------------------------------

    def vxlan_name(self, bridge: str) -> str:
        return ("vx" + bridge)[:15]

    async def ensure_vxlan(self, bridge: str, vni: int) -> None:
        vx = self.vxlan_name(bridge)
        if not link_exists(vx):
            local = f" local {self.address}" if _is_ip(self.address) and not IPv4Address(self.address).is_loopback else ""
            await ip_batch([f"link add {vx} type vxlan id {vni} dstport {VXLAN_PORT}{local}",
                            f"link set {vx} mtu {MTU}", f"link set {vx} master {bridge} up"])
        await self.refresh_peers(bridge)

    async def refresh_peers(self, bridge: str) -> None:
        """Flood entries for every other live agent's address (head-end replication)."""
        vx = self.vxlan_name(bridge)
        if not link_exists(vx):
            return
        peers = await self._peers()
        try:
            shown = await run("bridge", "fdb", "show", "dev", vx)
        except CommandFailed:
            shown = ""
        have = {ln.split(" dst ")[1].split()[0] for ln in shown.splitlines()
                if ln.startswith("00:00:00:00:00:00") and " dst " in ln}
        lines = [f"fdb append 00:00:00:00:00:00 dev {vx} dst {p}" for p in sorted(peers - have)]
        lines += [f"fdb del 00:00:00:00:00:00 dev {vx} dst {p}" for p in sorted(have - peers)]
        if lines:
            await run("bridge", "-batch", "-", stdin="\n".join(lines) + "\n")

    async def _peers(self) -> set[str]:
        from shared.messages.agent import Heartbeat
        try:
            kv = TypedKV(await self.nc.jetstream().key_value(subjects.KV_AGENTS), Heartbeat)
            keys = await kv.keys()
        except Exception as e:  # noqa: BLE001 - no heartbeats (yet): no peers to flood to
            log.warning("overlay peers: %s", e)
            return set()
        out = set()
        for k in keys:
            got = await kv.get(k)
            if got is None or got[0].agent_id == self.agent_id:
                continue
            addr = got[0].address
            if _is_ip(addr) and addr != self.address:
                out.add(addr)
        return out


def _is_ip(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False

