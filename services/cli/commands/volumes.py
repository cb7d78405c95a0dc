"""`volume create|ls|inspect|rm|prune`: named volumes, each on one host (docker's verbs and columns).

A volume lives on the agent that made it; `volume ls` asks every agent and shows the
host. `create` makes it on `--host` (default: the host placement would pick for a
container); `inspect`, `rm` find the host that holds the name (a name on two hosts
needs `--host`).
"""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("volume", help="manage volumes")
    vsub = p.add_subparsers(dest="volume_command", metavar="COMMAND")

    c = vsub.add_parser("create", help="create a volume")
    c.add_argument("-d", "--driver", default="local")
    c.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VAL",
                   help="driver options: type=tmpfs|none, device=DIR, o=OPTS")
    c.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VAL")
    c.add_argument("--host", help="the agent to create it on")
    c.add_argument("name", nargs="?", default="")
    c.set_defaults(func=create)

    ls = vsub.add_parser("ls", aliases=["list"], help="list volumes")
    ls.add_argument("-q", "--quiet", action="store_true", help="only names")
    ls.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                    help="dangling=true|false, label=KEY[=VAL], name=TEXT")
    ls.add_argument("--host", help="only this agent's volumes")
    ls.set_defaults(func=ls_)

    i = vsub.add_parser("inspect", help="details of volumes (JSON)")
    i.add_argument("--host")
    i.add_argument("names", nargs="+")
    i.set_defaults(func=inspect)

    r = vsub.add_parser("rm", aliases=["remove"], help="remove volumes (refused while a container uses one)")
    r.add_argument("-f", "--force", action="store_true", help="no error for a volume that does not exist")
    r.add_argument("--host")
    r.add_argument("names", nargs="+")
    r.set_defaults(func=rm)

    pr = vsub.add_parser("prune", help="remove unused anonymous volumes (-a: unused named ones too)")
    pr.add_argument("-a", "--all", action="store_true")
    pr.add_argument("-f", "--force", action="store_true", help="do not ask (nothing is asked)")
    pr.add_argument("--filter", action="append", default=[], metavar="label=KEY[=VAL]")
    pr.add_argument("--host")
    pr.set_defaults(func=prune)


def _kv(items: list[str], what: str) -> dict[str, str]:
    from shared.errors import InvalidArgument
    out = {}
    for it in items:
        k, eq, v = it.partition("=")
        if not k or (what == "--opt" and not eq):
            raise InvalidArgument(f"invalid {what} {it!r}: KEY=VALUE")
        out[k] = v
    return out


def _filters(items: list[str]) -> dict:
    from shared.errors import InvalidArgument
    out: dict = {"labels": []}
    for f in items:
        k, _, v = f.partition("=")
        if k == "dangling":
            if v.lower() not in ("true", "false", "1", "0"):
                raise InvalidArgument(f"invalid filter {f!r}: dangling=true|false")
            out["dangling"] = v.lower() in ("true", "1")
        elif k == "label":
            out["labels"].append(v)
        elif k == "name":
            out["name"] = v
        else:
            raise InvalidArgument(f"invalid filter {k!r}: dangling, label or name")
    return out


async def gather(ctx, req, host: str | None = None) -> list:
    """Every agent's VolumeListReply (or `host`'s alone)."""
    from services.cli.commands.containers import fleet
    from shared import subjects
    from shared.messages.agent import fleet as fleet_subject
    from shared.messages.volumes import VERB_VOLUME_LS, VolumeListReply
    client = await ctx.bus()
    if host:
        return [await client.request(subjects.agent(host, VERB_VOLUME_LS), req, VolumeListReply)]
    agents = await fleet(ctx)
    if not agents:
        return []
    return await client.gather(fleet_subject(VERB_VOLUME_LS), req, VolumeListReply, timeout=2.0,
                               expect=len(agents))


async def holder(ctx, name: str, host: str | None) -> str | None:
    """The host that holds volume `name` (None if none does)."""
    from shared.errors import InvalidArgument
    from shared.messages.volumes import VolumeListRequest
    if host:
        return host
    hosts = sorted({r.host for r in await gather(ctx, VolumeListRequest()) for v in r.volumes
                    if v.volume.name == name})
    if len(hosts) > 1:
        raise InvalidArgument(f"volume {name} exists on {len(hosts)} hosts ({', '.join(hosts)}): say which with --host")
    return hosts[0] if hosts else None


async def create(args, ctx) -> int:
    from services.cli.commands.containers import place
    from shared import subjects
    from shared.messages.volumes import VERB_VOLUME_CREATE, VolumeCreateRequest, VolumeReply
    host = args.host or (await holder(ctx, args.name, None) if args.name else None) or await place(ctx, "", None, None)
    client = await ctx.bus()
    req = VolumeCreateRequest(name=args.name, driver=args.driver, options=_kv(args.opt, "--opt"),
                              labels=_kv(args.label, "--label"))
    reply = await client.request(subjects.agent(host, VERB_VOLUME_CREATE), req, VolumeReply)
    if ctx.json_output:
        ctx.print_json(reply.volume)
    else:
        print(reply.volume.name)
    return 0


async def ls_(args, ctx) -> int:
    from shared.messages.volumes import VolumeListRequest
    replies = await gather(ctx, VolumeListRequest(**_filters(args.filter)), args.host)
    rows = sorted(((r.host, v) for r in replies for v in r.volumes), key=lambda hv: (hv[1].volume.name, hv[0]))
    if ctx.json_output:
        ctx.print_json([v.volume for _, v in rows])
        return 0
    if args.quiet:
        for _, v in rows:
            print(v.volume.name)
        return 0
    ctx.print_table(["DRIVER", "VOLUME NAME", "HOST"], [[v.volume.driver, v.volume.name, h] for h, v in rows])
    return 0


def inspect_view(v) -> dict:
    """docker's `volume inspect` shape, plus the host and the containers using it."""
    return {"CreatedAt": v.volume.created, "Driver": v.volume.driver, "Labels": v.volume.labels,
            "Mountpoint": v.volume.mountpoint, "Name": v.volume.name, "Options": v.volume.options or None,
            "Scope": "local", "Host": v.volume.host, "UsedBy": v.used_by}


async def inspect(args, ctx) -> int:
    from shared import subjects
    from shared.errors import NotFound
    from shared.messages.volumes import VERB_VOLUME_INSPECT, VolumeRef, VolumeReply
    client = await ctx.bus()
    out, rc = [], 0
    for name in args.names:
        host = await holder(ctx, name, args.host)
        if host is None:
            ctx.error(f"no such volume: {name}")
            rc = 1
            continue
        try:
            out.append(inspect_view(await client.request(subjects.agent(host, VERB_VOLUME_INSPECT),
                                                         VolumeRef(name=name), VolumeReply)))
        except NotFound as e:
            ctx.error(e.message)
            rc = 1
    ctx.print_json(out)
    return rc


async def rm(args, ctx) -> int:
    from shared import subjects
    from shared.errors import DockyardError, PermissionDenied
    from shared.messages.volumes import VERB_VOLUME_RM, VolumeRmReply, VolumeRmRequest
    client = await ctx.bus()
    rc = 0
    for name in args.names:
        try:
            host = await holder(ctx, name, args.host)
            if host is None:
                if not args.force:
                    ctx.error(f"no such volume: {name}")
                    rc = 1
                continue
            await client.request(subjects.agent(host, VERB_VOLUME_RM), VolumeRmRequest(name=name, force=args.force),
                                 VolumeRmReply, timeout=60)
            print(name)
        except PermissionDenied:
            raise
        except DockyardError as e:
            ctx.error(e.message)
            rc = 1
    return rc


async def prune(args, ctx) -> int:
    from services.cli.commands.containers import _bytes, fleet
    from shared import subjects
    from shared.messages.volumes import VERB_VOLUME_PRUNE, VolumePruneReply, VolumePruneRequest
    labels = [f.partition("=")[2] for f in args.filter if f.startswith("label=")]
    client = await ctx.bus()
    hosts = [args.host] if args.host else [b.agent_id for b in await fleet(ctx)]
    total = 0
    print("Deleted Volumes:")
    for h in hosts:
        r = await client.request(subjects.agent(h, VERB_VOLUME_PRUNE),
                                 VolumePruneRequest(all=args.all, labels=labels), VolumePruneReply, timeout=300)
        for name in r.removed:
            print(name)
        total += r.reclaimed
    print(f"\nTotal reclaimed space: {_bytes(total)}")
    return 0
