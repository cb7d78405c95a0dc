"""`dockyard network create|ls|inspect|rm|prune|connect|disconnect`: user networks (issue 12).

A network lives on an agent's host (its own bridge and subnet there). `create` makes it on
every live agent unless `--host` names one, so `run --network NAME` works wherever the
container is placed; the other verbs find a network by name or id prefix across the
fleet (a scatter-gather of the agents' listings).
"""

from __future__ import annotations

import sys
from typing import Any

PREDEFINED = (("bridge", "bridge"), ("host", "host"), ("none", "null"))  # docker's, on every host


def register(sub: Any) -> None:
    p = sub.add_parser("network", help="manage user networks")
    nsub = p.add_subparsers(dest="network_command", metavar="COMMAND", required=True)

    c = nsub.add_parser("create", help="create a network")
    c.add_argument("-d", "--driver", default="bridge", choices=("bridge", "overlay"),
                   help="bridge (one host) or overlay (across the fleet's hosts, over VXLAN)")
    c.add_argument("--subnet", default="", help="CIDR, e.g. 10.90.0.0/24 (default: a free one)")
    c.add_argument("--gateway", default="", help="the subnet's gateway (default: its first address)")
    c.add_argument("--internal", action="store_true", help="no route out of the network")
    c.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VAL")
    c.add_argument("--host", help="only on this agent (default: every live agent)")
    c.add_argument("name")
    c.set_defaults(func=create)

    ls = nsub.add_parser("ls", aliases=["list"], help="list networks")
    ls.add_argument("-q", "--quiet", action="store_true", help="only ids")
    ls.add_argument("--no-trunc", action="store_true")
    ls.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                    help="name, id, driver, label, type (builtin|custom)")
    ls.add_argument("--host", help="only this agent's networks")
    ls.set_defaults(func=ls_networks)

    i = nsub.add_parser("inspect", help="networks in detail (JSON)")
    i.add_argument("networks", nargs="+")
    i.set_defaults(func=inspect)

    r = nsub.add_parser("rm", aliases=["remove"], help="remove networks")
    r.add_argument("networks", nargs="+")
    r.set_defaults(func=rm)

    pr = nsub.add_parser("prune", help="remove every network no container is on")
    pr.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    pr.add_argument("--filter", action="append", default=[], metavar="label=KEY=VAL")
    pr.set_defaults(func=prune)

    cn = nsub.add_parser("connect", help="connect a container to a network")
    cn.add_argument("--alias", action="append", default=[], help="a name on this network")
    cn.add_argument("--ip", default="", help="its address on this network")
    cn.add_argument("network")
    cn.add_argument("container")
    cn.set_defaults(func=connect)

    dc = nsub.add_parser("disconnect", help="disconnect a container from a network")
    dc.add_argument("-f", "--force", action="store_true")
    dc.add_argument("network")
    dc.add_argument("container")
    dc.set_defaults(func=disconnect)


# ---- finding networks ------------------------------------------------------------------

async def _listings(ctx, host: str | None = None) -> list:
    """Every agent's NetworkListReply (or just `host`'s)."""
    from services.cli.commands.containers import fleet
    from shared import subjects
    from shared.messages.agent import fleet as fleet_subject
    from shared.messages.networks import VERB_NETWORK_LS, NetworkListReply, NetworkListRequest
    client = await ctx.bus()
    if host:
        return [await client.request(subjects.agent(host, VERB_NETWORK_LS), NetworkListRequest(),
                                     NetworkListReply)]
    agents = await fleet(ctx)
    if not agents:
        return []
    return await client.gather(fleet_subject(VERB_NETWORK_LS), NetworkListRequest(), NetworkListReply,
                               timeout=2.0, expect=len(agents))


def _matches(rec, ref: str) -> bool:
    return rec.name == ref or rec.id == ref or (len(ref) >= 1 and rec.id.startswith(ref))


async def _find(ctx, ref: str, host: str | None = None) -> list:
    """[(host, NetworkRecord)] that `ref` names (one per host it exists on)."""
    from shared.errors import NotFound
    hits = []
    for reply in await _listings(ctx, host):
        exact = [r for r in reply.networks if r.name == ref or r.id == ref]
        found = exact or [r for r in reply.networks if _matches(r, ref)]
        hits += [(reply.host, r) for r in found]
    if not hits:
        raise NotFound(f"network {ref} not found")
    return hits


# ---- handlers --------------------------------------------------------------------------

async def create(args, ctx) -> int:
    from services.cli.commands.containers import fleet
    from shared import subjects
    from shared.errors import NotFound
    from shared.messages.networks import VERB_NETWORK_CREATE, NetworkCreateRequest, NetworkReply
    labels = dict(lbl.partition("=")[::2] for lbl in args.label)
    req = NetworkCreateRequest(name=args.name, driver=args.driver, subnet=args.subnet, gateway=args.gateway,
                               internal=args.internal, labels=labels)
    hosts = [args.host] if args.host else [b.agent_id for b in await fleet(ctx)]
    if not hosts:
        raise NotFound("no runtime-agent is running")
    client = await ctx.bus()
    made = []
    for h in hosts:
        made.append((await client.request(subjects.agent(h, VERB_NETWORK_CREATE), req, NetworkReply)).network)
    if ctx.json_output:
        ctx.print_json(made)
    else:
        for nid in dict.fromkeys(rec.id for rec in made):  # an overlay has one id on every host
            print(nid)
    return 0


async def ls_networks(args, ctx) -> int:
    filters = [f.partition("=")[::2] for f in args.filter]
    rows, ids = [], []
    replies = sorted(await _listings(ctx, args.host), key=lambda r: r.host)
    for reply in replies:
        entries = [(_builtin_id(reply.host, n), n, d, "builtin", {}) for n, d in PREDEFINED]
        entries += [(r.id, r.name, r.driver, "custom", r.labels) for r in reply.networks]
        for nid, name, driver, kind, labels in entries:
            if not all(_keep(k, v, nid, name, driver, kind, labels) for k, v in filters):
                continue
            short = nid if args.no_trunc else nid[:12]
            ids.append(short)
            rows.append([short, name, driver, "global" if driver == "overlay" else "local", reply.host])
    if ctx.json_output:
        ctx.print_json([r for reply in replies for r in reply.networks])
    elif args.quiet:
        for i in ids:
            print(i)
    else:
        ctx.print_table(["NETWORK ID", "NAME", "DRIVER", "SCOPE", "HOST"], rows)
    return 0


def _builtin_id(host: str, name: str) -> str:
    import hashlib
    return hashlib.sha256(f"{host}/{name}".encode()).hexdigest()


def _keep(key: str, value: str, nid: str, name: str, driver: str, kind: str, labels: dict) -> bool:
    from shared.errors import InvalidArgument
    if key == "name":
        return value in name
    if key == "id":
        return nid.startswith(value)
    if key == "driver":
        return driver == value
    if key == "type":
        return kind == value
    if key == "label":
        k, eq, v = value.partition("=")
        return k in labels and (not eq or labels[k] == v)
    raise InvalidArgument(f"invalid filter {key!r} (name, id, driver, label, type)")


def docker_view(host: str, rec) -> dict:
    """`network inspect` in docker's shape."""
    return {
        "Name": rec.name, "Id": rec.id, "Created": rec.created,
        "Scope": "global" if rec.driver == "overlay" else "local", "Driver": rec.driver,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {}, "Config": [{"Subnet": rec.subnet, "Gateway": rec.gateway}]},
        "Internal": rec.internal, "Attachable": False, "Ingress": False,
        "Containers": {c.id: {"Name": c.name, "MacAddress": c.mac, "IPv4Address": f"{c.ip}/{c.prefixlen}",
                              "IPv6Address": "", "Aliases": c.aliases} for c in rec.containers},
        "Options": {"com.docker.network.bridge.name": rec.bridge},
        "Labels": rec.labels, "Host": host,
    }


async def inspect(args, ctx) -> int:
    from shared.errors import NotFound
    out, rc = [], 0
    for ref in args.networks:
        try:
            out += [docker_view(h, r) for h, r in await _find(ctx, ref)]
        except NotFound as e:
            ctx.error(e.message)
            rc = 1
    ctx.print_json(out)
    return rc


async def rm(args, ctx) -> int:
    from shared import subjects
    from shared.errors import DockyardError
    from shared.messages.networks import VERB_NETWORK_RM, NetworkRef, NetworkReply
    client = await ctx.bus()
    rc = 0
    for ref in args.networks:
        try:
            for host, rec in await _find(ctx, ref):
                await client.request(subjects.agent(host, VERB_NETWORK_RM), NetworkRef(network=rec.id), NetworkReply)
            print(ref)
        except DockyardError as e:
            ctx.error(e.message)
            rc = 1
    return rc


async def prune(args, ctx) -> int:
    from services.cli.commands.containers import fleet
    from shared import subjects
    from shared.errors import InvalidArgument
    from shared.messages.networks import VERB_NETWORK_PRUNE, NetworkPruneReply, NetworkPruneRequest
    labels = {}
    for f in args.filter:
        key, _, rest = f.partition("=")
        if key != "label":
            raise InvalidArgument(f"invalid filter {f!r} (label=KEY=VAL)")
        k, _, v = rest.partition("=")
        labels[k] = v
    if not args.force:
        if not sys.stdin.isatty():
            raise InvalidArgument("network prune removes every unused network: give -f to confirm")
        answer = input("WARNING! This will remove all custom networks not used by at least one container.\n"
                       "Are you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    client = await ctx.bus()
    removed = []
    for b in await fleet(ctx):
        reply = await client.request(subjects.agent(b.agent_id, VERB_NETWORK_PRUNE),
                                     NetworkPruneRequest(labels=labels), NetworkPruneReply)
        removed += reply.removed
    if ctx.json_output:
        ctx.print_json(removed)
    elif removed:
        print("Deleted Networks:")
        for name in removed:
            print(name)
    return 0


async def connect(args, ctx) -> int:
    from services.cli.commands.containers import find
    from shared import subjects
    from shared.messages.networks import VERB_NETWORK_CONNECT, ConnectRequest, NetworkReply
    host, c = await find(ctx, args.container)
    await _find(ctx, args.network, host)  # a clear error if the container's host lacks it
    client = await ctx.bus()
    await client.request(subjects.agent(host, VERB_NETWORK_CONNECT),
                         ConnectRequest(network=args.network, container=c.id, aliases=args.alias, ip=args.ip),
                         NetworkReply)
    return 0


async def disconnect(args, ctx) -> int:
    from services.cli.commands.containers import find
    from shared import subjects
    from shared.messages.networks import VERB_NETWORK_DISCONNECT, DisconnectRequest, NetworkReply
    host, c = await find(ctx, args.container)
    client = await ctx.bus()
    await client.request(subjects.agent(host, VERB_NETWORK_DISCONNECT),
                         DisconnectRequest(network=args.network, container=c.id, force=args.force), NetworkReply)
    return 0
