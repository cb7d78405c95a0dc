"""Where a `run` must go for its volumes: the host of its named volumes or --volumes-from container.

The rule is shared.placement.volume_host; this module asks the agents (one
scatter-gather, only when the run names a volume or another container).
"""

from __future__ import annotations


def named(req) -> list[str]:
    """The volume names a RunRequest mounts (`-v NAME:/p`, `--mount source=NAME`)."""
    from shared.messages.volumes import NAME_RE
    out = []
    for spec in req.volumes:
        src, sep, _ = spec.partition(":")
        if sep and not src.startswith("/") and NAME_RE.match(src):
            out.append(src)
    out += [m.source for m in req.mounts if m.type == "volume" and m.source]
    return out


async def host_of(ctx, req) -> str | None:
    from services.cli.commands.containers import find
    from services.cli.commands.volumes import gather
    from shared import placement
    from shared.errors import InvalidArgument
    from shared.messages.volumes import VolumeListRequest
    hosts: set[str] = set()
    for spec in req.volumes_from:
        host, _ = await find(ctx, spec.partition(":")[0])
        hosts.add(host)
    names = named(req)
    if names:
        holders: dict[str, set[str]] = {}
        for r in await gather(ctx, VolumeListRequest()):
            for v in r.volumes:
                holders.setdefault(v.volume.name, set()).add(r.host)
        h = placement.volume_host(names, holders)
        if h is not None:
            hosts.add(h)
    if len(hosts) > 1:
        raise InvalidArgument(f"the container's volumes live on different hosts ({', '.join(sorted(hosts))})")
    return next(iter(hosts), None)
