"""A container's network namespace: named, so the OCI spec can join it by path.

`ip netns add NAME` bind-mounts the new namespace at /run/netns/NAME; the runtime
joins it through `linux.namespaces[{type: network, path: ...}]`. A bridged sandbox
gets a veth pair: the host end on the bridge, the peer inside as eth0.

Removing a sandbox unmounts the namespace; the kernel then destroys it, and the
veth pair with it, as soon as no process is left inside (that takes the kernel a
moment, asynchronously; deleting the veth first would cost ~20 ms of RCU sync).
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Interface

from services.runtime_agent.network._exec import CommandFailed, ip_batch
from services.runtime_agent.network.bridge import link_exists
from services.runtime_agent.network.config import NETNS_DIR, NetworkConfig


class Sandboxes:
    def __init__(self, config: NetworkConfig):
        self.config = config

    def exists(self, container_id: str) -> bool:
        return self.config.netns_path(container_id).exists()

    def list_ids(self) -> list[str]:
        """Containers that have a netns of ours on this host."""
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return []
        ids = (self.config.container_of_netns(n) for n in names)
        return sorted(i for i in ids if i is not None)

    async def create_isolated(self, container_id: str) -> str:
        """`--network none`: a namespace with only `lo`, up."""
        name = self.config.netns_name(container_id)
        await self._clear_stale(container_id)
        await ip_batch([f"netns add {name}"])
        await ip_batch(["link set lo up"], netns=name)
        return str(self.config.netns_path(container_id))

    async def create_bridged(self, container_id: str, address: IPv4Interface,
                             gateway: IPv4Address) -> str:
        """A namespace with `lo` and eth0 at `address`, routed through `gateway`."""
        cfg = self.config
        name, veth = cfg.netns_name(container_id), cfg.veth_name(container_id)
        await self._clear_stale(container_id)
        # Two processes in all: the host side, then the inside, each one batch.
        # The peer is created directly in the namespace as eth0 (no rename step).
        await ip_batch([
            f"netns add {name}",
            f"link add {veth} type veth peer name eth0 netns {name}",
            f"link set {veth} master {cfg.bridge} up",
        ])
        try:
            await ip_batch([
                "link set lo up",
                f"addr add {address} dev eth0",
                "link set eth0 up",
                f"route add default via {gateway} dev eth0",
            ], netns=name)
        except BaseException:
            await self.remove(container_id)
            raise
        return str(cfg.netns_path(container_id))

    async def _clear_stale(self, container_id: str) -> None:
        """Remove what a crashed earlier set-up of this container left behind."""
        veth = self.config.veth_name(container_id)
        await self.remove(container_id)
        if link_exists(veth):
            # Either the kernel is still destroying an old namespace's pair or a
            # set-up died between `link add` and moving on: delete it either way.
            try:
                await ip_batch([f"link del {veth}"])
            except CommandFailed:
                if link_exists(veth):
                    raise

    async def remove(self, container_id: str) -> None:
        """Drop the namespace (and so its veth pair); a missing one is fine."""
        if not self.exists(container_id):
            return
        try:
            await ip_batch([f"netns del {self.config.netns_name(container_id)}"])
        except CommandFailed:
            if self.exists(container_id):
                raise
