"""User networks (issue 12): `dockyard network ...` requests and the records agents keep.

Each agent owns its networks (a bridge and a subnet on its host): per-host verbs are
`shared.subjects.agent(agent_id, VERB)`, the fleet-wide listing is
`shared.messages.agent.fleet(VERB_NETWORK_LS)`. A container names the networks it is on
in `ContainerConfig.endpoints`; what they gave it is in `NetworkInfo.endpoints`.

This module is imported by the CLI: it imports msgspec and nothing heavy.
"""

from __future__ import annotations

import msgspec

VERB_NETWORK_CREATE = "network.create"
VERB_NETWORK_LS = "network.ls"
VERB_NETWORK_INSPECT = "network.inspect"
VERB_NETWORK_RM = "network.rm"
VERB_NETWORK_PRUNE = "network.prune"
VERB_NETWORK_CONNECT = "network.connect"
VERB_NETWORK_DISCONNECT = "network.disconnect"

BUILTIN_NETWORKS = ("bridge", "none", "host")  # docker's predefined ones: never a user network
DRIVERS = ("bridge", "overlay")


class Endpoint(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A container's wish to be on a user network: `--network N --network-alias A --ip IP`."""

    network: str
    aliases: list[str] = []
    ip: str = ""  # a fixed address in the network's subnet; "" picks one


class EndpointInfo(msgspec.Struct, kw_only=True, frozen=True):
    """What a user network gave a running container."""

    network: str
    network_id: str = ""
    ip: str = ""
    prefixlen: int = 0
    gateway: str = ""
    mac: str = ""
    interface: str = ""  # eth0, eth1, ... inside the container
    aliases: list[str] = []  # every name the network's DNS answers for it (name, short id, aliases)


class NetworkContainer(msgspec.Struct, kw_only=True, frozen=True):
    """One container on a network, as `network inspect` shows it."""

    id: str
    name: str = ""
    ip: str = ""
    prefixlen: int = 0
    mac: str = ""
    aliases: list[str] = []


class NetworkRecord(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    name: str
    driver: str = "bridge"
    subnet: str = ""
    gateway: str = ""
    internal: bool = False
    labels: dict[str, str] = {}
    created: str = ""  # RFC 3339
    host: str = ""  # the agent that holds it
    bridge: str = ""  # the Linux bridge on that host
    vni: int = 0  # overlay: the VXLAN network identifier, the same on every host
    containers: list[NetworkContainer] = []


class NetworkCreateRequest(msgspec.Struct, kw_only=True):
    name: str
    driver: str = "bridge"
    subnet: str = ""  # CIDR; "" picks a free one from the agent's pool
    gateway: str = ""  # "" the subnet's first address
    internal: bool = False
    labels: dict[str, str] = {}


class NetworkRef(msgspec.Struct, kw_only=True):
    """A network by name, full id or unique id prefix (on this agent)."""

    network: str


class NetworkListRequest(msgspec.Struct, kw_only=True):
    pass


class NetworkReply(msgspec.Struct, kw_only=True):
    network: NetworkRecord


class NetworkListReply(msgspec.Struct, kw_only=True):
    host: str
    networks: list[NetworkRecord] = []


class NetworkPruneRequest(msgspec.Struct, kw_only=True):
    labels: dict[str, str] = {}  # only networks carrying all of these (`--filter label=K=V`)


class NetworkPruneReply(msgspec.Struct, kw_only=True):
    host: str
    removed: list[str] = []  # names


class ConnectRequest(msgspec.Struct, kw_only=True):
    network: str
    container: str
    aliases: list[str] = []
    ip: str = ""


class DisconnectRequest(msgspec.Struct, kw_only=True):
    network: str
    container: str
    force: bool = False
