"""`system df [-v]`: disk use by images, containers and volumes, per host (docker's columns plus HOST)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("system", help="disk usage of the fleet's hosts")
    ssub = p.add_subparsers(dest="system_command", metavar="COMMAND")
    d = ssub.add_parser("df", help="disk usage by images, containers and volumes, per host")
    d.add_argument("-v", "--verbose", action="store_true", help="one row per image, container and volume")
    d.add_argument("--host", help="only this agent")
    d.set_defaults(func=df)
    from services.cli.commands.prune import add_system_prune
    add_system_prune(ssub)


async def _build_cache(ctx, client) -> dict | None:
    """The builder's cache as `builder prune` would see it (a dry run of the same verb): records,
    those a running build holds (active), and the bytes of the others (compressed, in the registry).
    None when no builder answers or the person may not ask."""
    from shared import subjects
    from shared.errors import DockyardError
    from shared.messages.gc import PruneReply, PruneRequest
    try:
        r = await client.request(subjects.BUILDER_PRUNE, PruneRequest(max_bytes=0, dry_run=True), PruneReply,
                                 timeout=10)  # bounded: a reader's df should not wait long for it
    except DockyardError:
        return None
    return {"total": r.examined, "active": r.examined - r.removed, "reclaimable": r.freed}


def _size(n: int) -> str:
    from services.cli.commands.images import human_size
    return human_size(n)


async def df(args, ctx) -> int:
    from services.cli.commands.containers import fleet
    from shared import subjects
    from shared.messages.agent import fleet as fleet_subject
    from shared.messages.diskusage import VERB_DF, DfReply, DfRequest
    client = await ctx.bus()
    req = DfRequest(verbose=args.verbose)
    if args.host:
        replies = [await client.request(subjects.agent(args.host, VERB_DF), req, DfReply, timeout=120)]
    else:
        agents = await fleet(ctx)
        replies = await client.gather(fleet_subject(VERB_DF), req, DfReply, timeout=60.0,
                                      expect=len(agents)) if agents else []
    replies.sort(key=lambda r: r.host)
    cache = await _build_cache(ctx, client)
    if ctx.json_output:
        ctx.print_json({"hosts": replies, "build_cache": cache})
        return 0
    rows = []
    for r in replies:
        for label, k in (("Images", r.images), ("Containers", r.containers), ("Local Volumes", r.volumes)):
            pct = f" ({100 * k.reclaimable // k.size}%)" if k.size else ""
            rows.append([label, k.total, k.active, _size(k.size), _size(k.reclaimable) + pct, r.host])
    if cache:
        rows.append(["Build Cache", cache["total"], cache["active"], _size(cache["reclaimable"]),
                     _size(cache["reclaimable"]), "(builder)"])
    ctx.print_table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE", "HOST"], rows)
    if args.verbose:
        for title, pick, head in (("Images space usage:", lambda r: r.images,
                                   ["IMAGE", "SIZE", "SHARED SIZE", "UNIQUE SIZE", "CONTAINERS", "HOST"]),
                                  ("Containers space usage:", lambda r: r.containers,
                                   ["NAME", "SIZE", "RUNNING", "HOST"]),
                                  ("Local Volumes space usage:", lambda r: r.volumes,
                                   ["VOLUME NAME", "SIZE", "IN USE", "HOST"])):
            print(f"\n{title}\n")
            out = []
            for r in replies:
                for e in pick(r).entries:
                    if head[0] == "IMAGE":
                        out.append([e.name, _size(e.size), _size(e.shared), _size(e.size - e.shared),
                                    "yes" if e.active else "no", r.host])
                    else:
                        out.append([e.name, _size(e.size), "yes" if e.active else "no", r.host])
            ctx.print_table(head, out)
    return 0
