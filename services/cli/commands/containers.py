"""`run`, `ps`, `inspect`, `agents`: containers on the fleet, and the fleet itself.

Which agent runs or holds a container is services.cli.locate's; `logs`, `stop`, `start`,
`kill`, `rm` are commands/lifecycle.py. Heavy imports stay inside the handlers: start-up
time is part of every `dockyard run` (`ps`, `inspect`, `agents` run without an event loop).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from services.cli import runopts
from services.cli.commands import interactive
from services.cli.container_streams import SignalProxy, Stream
# Their old home: other commands import them from here.
from services.cli.humanize import parse_size, size as _bytes  # noqa: F401
from services.cli.locate import agent_images, find, fleet, heartbeats, place  # noqa: F401


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run a command in a new container")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background, print the id")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--name")
    p.add_argument("--hostname", help="the container's host name (default: its short id)")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CTR[/PROTO]")
    p.add_argument("-m", "--memory", help="memory limit (e.g. 200m)")
    p.add_argument("--memory-swap", help="memory + swap limit (e.g. 1g), -1 unlimited")
    p.add_argument("-c", "--cpu-shares", type=int)
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VAL]")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST|NAME:CTR[:ro]",
                   help="a host path or a named volume (made if missing) at CTR; `-v CTR` an anonymous volume")
    # volumes: docker's --mount and --volumes-from
    p.add_argument("--mount", action="append", default=[], metavar="type=volume|bind|tmpfs,source=,target=")
    p.add_argument("--volumes-from", action="append", default=[], metavar="CONTAINER[:ro|rw]")
    p.add_argument("--entrypoint")
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--restart", default="no", help="no | on-failure[:N] | always | unless-stopped")
    p.add_argument("--network", "--net", default="bridge", help="bridge, none, host or a user network")
    p.add_argument("--network-alias", "--net-alias", action="append", default=[],
                   help="a name for it on its user network")  # networks
    p.add_argument("--ip", default="", help="its address on its user network")  # networks
    p.add_argument("--pull", default="missing", choices=("missing", "always", "never"))
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VAL")
    p.add_argument("--host", help="the agent to run on (default: the one with the most free memory)")
    runopts.add_arguments(p)  # runflags: the issue-11 flags
    interactive.add_run_flags(p)  # interactive: -i, -t, --detach-keys, --sig-proxy
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)

    p = sub.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--host", help="only this agent's containers")
    # runflags: docker's listing flags
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="status, name, label, ancestor, health, host, id")
    p.add_argument("--format", help="a Go template ({{.ID}}\\t{{.Names}}), table TEMPLATE, or json")
    p.add_argument("-n", "--last", type=int, help="the N most recently created (any state)")
    p.add_argument("-l", "--latest", action="store_true", help="the most recently created (any state)")
    p.add_argument("-s", "--size", action="store_true", help="show the writable layer's size")
    p.set_defaults(func=ps, loopless=True)  # read-only bus verbs: shared.bus_blocking

    p = sub.add_parser("inspect", help="low-level information on containers (JSON)")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=inspect, loopless=True)

    p = sub.add_parser("agents", help="the fleet of runtime-agents")
    p.add_argument("-q", "--quiet", action="store_true", help="only agent ids")  # runflags
    p.add_argument("--format", help="a Go template ({{.ID}}\\t{{.Status}}), table TEMPLATE, or json")
    p.set_defaults(func=agents, loopless=True)


# ---- handlers --------------------------------------------------------------------------

async def run(args, ctx) -> int:
    from shared.messages.agent import RunRequest
    memory = parse_size(args.memory) if args.memory else None
    swap = parse_size(args.memory_swap, allow_unlimited=True) if args.memory_swap else None
    env = []
    for e in args.env:
        if "=" in e:
            env.append(e)
        elif e in os.environ:  # docker passes `-e NAME` on from the client's environment
            env.append(f"{e}={os.environ[e]}")
    labels = dict(lbl.partition("=")[::2] for lbl in args.label)
    req = RunRequest(image=args.image, name=args.name or "", command=args.command or None,
                     entrypoint=[args.entrypoint] if args.entrypoint is not None else None, env=env,
                     workdir=args.workdir or "", user=args.user or "", publish=args.publish, memory=memory,
                     memory_swap=swap, cpu_shares=args.cpu_shares, volumes=args.volume, network=args.network,
                     restart=args.restart, rm=args.rm, detach=args.detach, pull=args.pull, labels=labels,
                     hostname=args.hostname or "", network_aliases=args.network_alias, ip=args.ip)
    req = runopts.apply(req, args)
    req = interactive.apply_run_flags(req, args)
    from services.cli import mountflag, volume_placement
    import msgspec
    req = msgspec.structs.replace(req, mounts=[mountflag.parse_mount(t) for t in args.mount],
                                  volumes_from=list(args.volumes_from))
    client = await ctx.bus()
    # volumes: a named volume (or a --volumes-from container) that lives on one host decides it
    host = await place(ctx, args.image, memory, args.host or await volume_placement.host_of(ctx, req))
    if interactive.wants_session(args):
        return await interactive.run_attached(args, ctx, client, host, req, _request_run)
    if args.detach:
        async with Stream(client, json_output=ctx.json_output) as stream:  # the pull's progress only
            reply = await _request_run(client, host, msgspec.structs.replace(req, stream_inbox=stream.inbox))
        if ctx.json_output:
            ctx.print_json(reply.container)
        else:
            print(reply.container.id)
        return 0
    async with Stream(client, json_output=ctx.json_output) as stream:
        import msgspec
        # Signals are the container's to handle from here on; its exit code becomes ours.
        with SignalProxy(client, host, ctx) as proxy:
            await proxy.start(_request_run(client, host, msgspec.structs.replace(req, stream_inbox=stream.inbox)))
            end = await stream.done
    if end.error:
        ctx.error(end.error)
        return 125
    return end.exit_code if end.exit_code is not None else 125


async def _request_run(client, host: str, req):
    """`run` on `host`; a host bind outside the agent's volume roots goes to the admin-only verb."""
    from shared import subjects
    from shared.errors import PermissionDenied
    from shared.messages.agent import NEEDS_PRIVILEGE, VERB_RUN, VOLUME_OUTSIDE_ROOTS, RunReply
    admin_verbs = {VOLUME_OUTSIDE_ROOTS: subjects.AGENT_RUN_HOST_BIND, NEEDS_PRIVILEGE: subjects.AGENT_RUN_PRIVILEGED}
    try:
        return await client.request(subjects.agent(host, VERB_RUN), req, RunReply, timeout=600)
    except PermissionDenied as e:
        # The agent refuses before it pulls or creates anything, so asking again is safe.
        if e.detail_code not in admin_verbs:
            raise
        verb = admin_verbs[e.detail_code]
    return await client.request(subjects.agent(host, verb), req, RunReply, timeout=600)


async def ps(args, ctx) -> int:
    from services.cli import psview
    from shared import subjects
    from shared.messages.agent import VERB_PS, PsReply, PsRequest, fleet as fleet_subject
    filters = psview.parse_filters(args.filter)
    last = 1 if args.latest else args.last
    want = PsRequest(all=args.all or last is not None or psview.needs_all(filters), size=args.size)
    client = await ctx.bus()
    if args.host:
        replies = [await client.request(subjects.agent(args.host, VERB_PS), want, PsReply)]
    else:
        agents = await fleet(ctx)
        replies = await client.gather(fleet_subject(VERB_PS), want, PsReply,
                                      timeout=2.0, expect=len(agents)) if agents else []
    found = [c for r in replies for c in r.containers]
    if want.all and not args.host:  # lifecycle: what agents that are gone last said they held
        from services.cli.ps_gone import containers_of_gone_agents
        found += await containers_of_gone_agents(client, {r.host for r in replies})
    sizes = {cid: s for r in replies for cid, s in r.sizes.items()}
    containers = sorted((c for c in found if psview.matches(c, filters)),
                        key=lambda c: c.created, reverse=True)[:last if last is not None and last > 0 else None]
    if ctx.json_output:
        ctx.print_json(containers)
        return 0
    if args.quiet:
        for c in containers:
            print(c.id if args.no_trunc else c.id[:12])
        return 0
    from services.cli.humanize import ago
    now = time.time()
    rows = []
    for c in containers:
        cmd = " ".join(c.config.args)
        if not args.no_trunc and len(cmd) > 20:
            cmd = cmd[:19] + "…"
        rows.append([c.id if args.no_trunc else c.id[:12], c.config.image, f'"{cmd}"',
                     ago(c.created, now), psview.status(c, now) + psview.health_suffix(c),
                     ", ".join(psview.port(p) for p in c.network.ports), c.name, c.host]
                    + ([_bytes(sizes.get(c.id, 0))] if args.size else []))
    if args.format:
        from services.cli.formatting import emit
        fields = [psview.row(c, status=r[4], running_for=r[3], ports=r[5], command=r[2], size=r[8] if args.size else "")
                  for c, r in zip(containers, rows)]
        emit(args.format, fields, psview.PS_HEADERS, [c.config.labels for c in containers])
        return 0
    ctx.print_table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES", "HOST"]
                    + (["SIZE"] if args.size else []), rows)
    return 0


async def inspect(args, ctx) -> int:
    from services.cli import inspectview, psview
    from shared import subjects
    from shared.messages.agent import VERB_INSPECT, ContainerRef, ContainerReply
    client = await ctx.bus()
    agents = await fleet(ctx)
    out = []
    for ref in args.containers:
        host, c = await find(ctx, ref, agents)
        reply = await client.request(subjects.agent(host, VERB_INSPECT), ContainerRef(container=c.id), ContainerReply)
        out.append(psview.inspect_extras(reply.container, inspectview.inspect_view(reply.container)))  # runflags
    ctx.print_json(out)
    return 0


async def agents(args, ctx) -> int:
    from shared.codec import to_builtins
    from shared.messages.agent import is_lost
    beats = sorted(await heartbeats(ctx), key=lambda b: b.agent_id)
    now = time.time()
    if ctx.json_output:
        ctx.print_json([{**to_builtins(b), "lost": is_lost(b, now)} for b in beats])
        return 0
    rows = [[b.agent_id, "lost" if is_lost(b, now) else "ready", b.address, b.runtime, b.running, b.containers,
             b.images, b.cpus, _bytes(b.memory_free), _bytes(b.memory_total), f"{max(0.0, now - b.time):.1f}s ago"]
            for b in beats]
    from services.cli import listing
    if listing.show(args, [listing.agent_fields(r) for r in rows], listing.AGENT_HEADERS):
        return 0
    ctx.print_table(["AGENT", "STATUS", "ADDRESS", "RUNTIME", "RUNNING", "CONTAINERS", "IMAGES", "CPUS",
                     "FREE MEMORY", "MEMORY", "LAST HEARTBEAT"], rows)
    return 0
