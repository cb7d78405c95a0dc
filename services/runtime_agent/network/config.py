"""The network's settings and the host-resource names derived from them.

Every name the package gives a kernel object (netns, veth, iptables chain, rule
comment) comes from here, so that a restarted agent finds exactly what an earlier
one created and never touches anything else.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from shared.errors import InvalidArgument

NETNS_DIR = Path("/run/netns")
IFNAMSIZ = 15  # the kernel's limit on an interface name, without the NUL

# Container ids end up in file names and iptables comments: keep them to a safe set.
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_PREFIX = re.compile(r"[a-z][a-z0-9]{1,11}")


def check_container_id(container_id: str) -> str:
    if not _CONTAINER_ID.fullmatch(container_id):
        raise InvalidArgument(f"invalid container id {container_id!r}")
    return container_id


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """One agent's bridge network. Tests pass their own bridge, subnet and prefix."""

    state_dir: Path
    bridge: str = "dockyard0"
    subnet: IPv4Network = field(default_factory=lambda: IPv4Network("10.88.0.0/16"))
    # Names every netns (`<prefix>-<id>`), veth (`<pref>v<hash>`), chain
    # (`<PREFIX>-DNAT`) and rule comment (`<prefix>:...`) this network owns.
    prefix: str = "dockyard"
    # networks: a user network's `--gateway`; None is the subnet's first address
    gateway_address: IPv4Address | None = None
    mac: str = ""  # networks: the bridge's MAC where it must be one across hosts (overlay)

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise InvalidArgument(f"invalid network prefix {self.prefix!r}: [a-z][a-z0-9]{{1,11}}")
        if not 0 < len(self.bridge) <= IFNAMSIZ or "/" in self.bridge or " " in self.bridge:
            raise InvalidArgument(f"invalid bridge name {self.bridge!r}")
        if self.subnet.prefixlen > 30:
            raise InvalidArgument(f"subnet {self.subnet} is too small for containers")

    # Addresses -------------------------------------------------------------
    @property
    def gateway(self) -> IPv4Address:
        return self.gateway_address or self.subnet.network_address + 1

    @property
    def gateway_interface(self) -> IPv4Interface:
        return IPv4Interface(f"{self.gateway}/{self.subnet.prefixlen}")

    @property
    def bridge_mac(self) -> str:
        # A fixed, locally administered MAC: without one the bridge takes the lowest
        # MAC of its ports, and every veth added or removed may change it (stale ARP).
        if self.mac:
            return self.mac
        h = hashlib.sha256(self.bridge.encode()).digest()
        return ":".join(f"{b:02x}" for b in (0x02, *h[:5]))

    # Names -------------------------------------------------------------------
    def netns_name(self, container_id: str) -> str:
        return f"{self.prefix}-{container_id}"

    def netns_path(self, container_id: str) -> Path:
        return NETNS_DIR / self.netns_name(container_id)

    def container_of_netns(self, name: str) -> str | None:
        """The container id a netns name of ours carries, else None."""
        head = f"{self.prefix}-"
        if name.startswith(head) and _CONTAINER_ID.fullmatch(name[len(head):]):
            return name[len(head):]
        return None

    def veth_name(self, container_id: str) -> str:
        # Interface names are short: at most 4 prefix letters leave room for 40 bits
        # of a hash of the id, which keeps the name unique and derivable.
        head = self.prefix[:4] + "v"
        return head + hashlib.sha256(container_id.encode()).hexdigest()[: IFNAMSIZ - len(head)]

    @property
    def chain_prefix(self) -> str:
        return self.prefix.upper()

    @property
    def dnat_chain(self) -> str:
        return f"{self.chain_prefix}-DNAT"

    @property
    def postrouting_chain(self) -> str:
        return f"{self.chain_prefix}-POSTROUTING"

    @property
    def forward_chain(self) -> str:
        return f"{self.chain_prefix}-FORWARD"

    @property
    def ipam_path(self) -> Path:
        return self.state_dir / f"ipam-{self.bridge}.json"
