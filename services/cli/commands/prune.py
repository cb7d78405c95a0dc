"""`container prune`, `image prune [-a]`, `builder prune [-a]`, `system prune [-a] [--volumes]`.

Each calls the prune verb the garbage-collector's jobs call (the agents' `prune` for
containers and images, the builder's for its cache; volumes: the agents' volume prune),
so a person's prune and a scheduled GC run go down one code path, and each refuses
what is in use the same way. Each prints what it removed and the space reclaimed.
"""

from __future__ import annotations

import sys
from typing import Any


def _add_common(p, *, all_help: str | None) -> None:
    if all_help:
        p.add_argument("-a", "--all", action="store_true", help=all_help)
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--filter", action="append", default=[], metavar="until=DURATION|label=K[=V]")
    p.add_argument("--host", help="only this agent")


def register(sub: Any) -> None:
    for name, fn, all_help, hlp in (
            ("container", container, None, "remove all stopped containers"),
            ("image", image, "every image no container uses, not only dangling ones", "remove unused images"),
            ("builder", builder, "all build cache, not only what is unused", "remove build cache")):
        p = sub.add_parser(name, help=f"{name} commands (prune)")
        psub = p.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        pr = psub.add_parser("prune", help=hlp)
        _add_common(pr, all_help=all_help)
        pr.set_defaults(func=fn)


def add_system_prune(ssub: Any) -> None:
    p = ssub.add_parser("prune", help="remove stopped containers, dangling images, build cache (and volumes)")
    _add_common(p, all_help="unused images, not only dangling ones (and named volumes with --volumes)")
    p.add_argument("--volumes", action="store_true", help="also unused anonymous volumes")
    p.set_defaults(func=system)


def _filters(items: list[str]) -> tuple[float | None, list[str]]:
    from shared.cron import parse_duration
    from shared.errors import InvalidArgument
    until, labels = None, []
    for f in items:
        k, _, v = f.partition("=")
        if k == "until":
            until = parse_duration(v)
        elif k == "label":
            labels.append(v)
        else:
            raise InvalidArgument(f"invalid filter {k!r}: until or label")
    return until, labels


def _confirm(args, what: str) -> bool:
    if args.force or not sys.stdin.isatty():
        return True
    answer = input(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


async def _hosts(ctx, args) -> list[str]:
    from services.cli.commands.containers import fleet
    return [args.host] if args.host else [b.agent_id for b in await fleet(ctx)]


async def _agents(ctx, args, req) -> tuple[list[str], int]:
    """(items as host/item, bytes freed) of the agents' prune verb."""
    from shared import subjects
    from shared.messages.gc import AGENT_PRUNE_VERB, PruneReply
    client = await ctx.bus()
    items, freed = [], 0
    for h in await _hosts(ctx, args):
        r = await client.request(subjects.agent(h, AGENT_PRUNE_VERB), req, PruneReply, timeout=300)
        items += [f"{h}: {it}" for it in r.items]
        freed += r.freed
    return items, freed


def _report(title: str, items: list[str]) -> None:
    print(f"{title}:")
    for it in items:
        print(it)
    print()


def _total(n: int) -> None:
    from services.cli.commands.images import human_size
    print(f"Total reclaimed space: {human_size(n)}")


async def _containers(ctx, args) -> int:
    from shared.messages.gc import PruneRequest
    until, labels = _filters(args.filter)
    items, freed = await _agents(ctx, args, PruneRequest(exited_before_seconds=0, images=False, labels=labels,
                                                         created_before_seconds=until))
    _report("Deleted Containers", items)
    return freed


async def _images(ctx, args, all_: bool) -> int:
    from shared.messages.gc import PruneRequest
    until, labels = _filters(args.filter)
    items, freed = await _agents(ctx, args, PruneRequest(dangling_only=not all_, labels=labels,
                                                         created_before_seconds=until))
    _report("Deleted Images", items)
    return freed


async def _builder(ctx, args, all_: bool) -> int:
    from shared import subjects
    from shared.messages.gc import PruneReply, PruneRequest
    until, labels = _filters(args.filter)
    from shared.errors import Unavailable
    client = await ctx.bus()
    # the builder keeps what a running build has leased whatever the request says
    try:
        r = await client.request(subjects.BUILDER_PRUNE, PruneRequest(max_age_seconds=until or 0.0),
                                 PruneReply, timeout=300)
    except Unavailable as e:
        ctx.error(f"build cache not pruned: {e.message}")
        return 0
    _report("Deleted build cache objects", list(r.items))
    return r.freed


async def _volumes(ctx, args, all_: bool) -> int:
    from shared import subjects
    from shared.messages.volumes import VERB_VOLUME_PRUNE, VolumePruneReply, VolumePruneRequest
    _, labels = _filters(args.filter)
    client = await ctx.bus()
    items, freed = [], 0
    for h in await _hosts(ctx, args):
        r = await client.request(subjects.agent(h, VERB_VOLUME_PRUNE), VolumePruneRequest(all=all_, labels=labels),
                                 VolumePruneReply, timeout=300)
        items += [f"{h}: {n}" for n in r.removed]
        freed += r.reclaimed
    _report("Deleted Volumes", items)
    return freed


async def container(args, ctx) -> int:
    if not _confirm(args, "all stopped containers"):
        return 1
    _total(await _containers(ctx, args))
    return 0


async def image(args, ctx) -> int:
    if not _confirm(args, "all images without at least one container associated to them" if args.all
                    else "all dangling images"):
        return 1
    _total(await _images(ctx, args, args.all))
    return 0


async def builder(args, ctx) -> int:
    if not _confirm(args, "all build cache"):
        return 1
    _total(await _builder(ctx, args, args.all))
    return 0


async def system(args, ctx) -> int:
    what = ["all stopped containers", "all build cache",
            "all images without at least one container associated to them" if args.all else "all dangling images"]
    if args.volumes:
        what.append("all volumes not used by at least one container" if args.all else "all anonymous volumes "
                    "not used by at least one container")
    if not _confirm(args, ", ".join(what)):
        return 1
    freed = await _containers(ctx, args)
    if args.volumes:
        freed += await _volumes(ctx, args, args.all)
    freed += await _images(ctx, args, args.all)
    freed += await _builder(ctx, args, args.all)
    _total(freed)
    return 0
