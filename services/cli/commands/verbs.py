"""`wait`, `restart`, `rename`, `port`, `pause`, `unpause`, `update`, `top`, `stats`, `diff`:
docker's everyday verbs, each a request to the agent that holds the container (found as
`stop` and `logs` find it: a fleet-wide `ps`), so they work on any host of the fleet."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("wait", help="block until containers stop, then print their exit codes")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=wait)

    p = sub.add_parser("restart", help="restart containers")
    p.add_argument("-t", "--time", "--timeout", dest="timeout", type=float,
                   help="seconds to wait for the stop before KILL (default: its --stop-timeout, else 10)")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=restart)

    p = sub.add_parser("rename", help="rename a container")
    p.add_argument("container")
    p.add_argument("new_name")
    p.set_defaults(func=rename)

    p = sub.add_parser("port", help="list a container's port mappings")
    p.add_argument("container")
    p.add_argument("private_port", nargs="?", metavar="PRIVATE_PORT[/PROTO]")
    p.set_defaults(func=port)

    for verb, what in (("pause", "suspend every process of containers (cgroup freezer)"),
                       ("unpause", "resume every process of paused containers")):
        p = sub.add_parser(verb, help=what)
        p.add_argument("containers", nargs="+")
        p.set_defaults(func=pause if verb == "pause" else unpause)

    p = sub.add_parser("update", help="change the limits or restart policy of containers")
    p.add_argument("-m", "--memory", help="memory limit (e.g. 200m)")
    p.add_argument("--memory-swap", help="memory + swap limit, -1 unlimited")
    p.add_argument("-c", "--cpu-shares", type=int)
    p.add_argument("--cpus", type=float, help="number of CPUs (CFS quota)")
    p.add_argument("--pids-limit", type=int, help="the most processes at once (-1 unlimited)")
    p.add_argument("--restart", help="no | on-failure[:N] | always | unless-stopped")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=update)
    register_inspecting(sub)


# ---- helpers ---------------------------------------------------------------------------

async def locate(ctx, ref: str, agents: list | None = None):
    from services.cli.locate import find
    return await find(ctx, ref, agents)


async def each(args, ctx, verb: str, make, reply_type, *, timeout: float = 30.0, show=None) -> int:
    """`verb` for every container named, on its agent; prints what `show` makes of the reply
    (default: the name as given); a container that fails does not stop the others."""
    from services.cli.locate import fleet
    from shared import subjects
    from shared.errors import DockyardError, PermissionDenied
    client = await ctx.bus()
    agents = await fleet(ctx)
    rc = 0
    for ref in args.containers:
        try:
            host, c = await locate(ctx, ref, agents)
            reply = await client.request(subjects.agent(host, verb), make(c.id), reply_type, timeout=timeout)
            print(show(reply) if show is not None else ref)
        except PermissionDenied:
            raise
        except DockyardError as e:
            ctx.error(e.message)
            rc = 1
    return rc


# ---- wait, restart, rename, port, pause, update -----------------------------------------

async def wait(args, ctx) -> int:
    from services.cli.locate import fleet
    from shared import subjects
    from shared.errors import DockyardError, PermissionDenied
    from shared.messages.verbs import VERB_WAIT, WaitReply, WaitRequest
    client = await ctx.bus()
    agents = await fleet(ctx)
    rc = 0
    for ref in args.containers:
        try:
            host, c = await locate(ctx, ref, agents)
            while True:  # short requests, asked again: an agent restart does not strand us
                r = await client.request(subjects.agent(host, VERB_WAIT), WaitRequest(container=c.id, timeout=30),
                                         WaitReply, timeout=45)
                if not r.running:
                    break
            print(r.exit_code)
        except PermissionDenied:
            raise
        except DockyardError as e:
            ctx.error(e.message)
            rc = 1
    return rc


async def restart(args, ctx) -> int:
    from shared.messages.verbs import VERB_RESTART, ContainerVerbReply, RestartRequest
    given = args.timeout is not None
    return await each(args, ctx, VERB_RESTART,
                      lambda cid: RestartRequest(container=cid, timeout=args.timeout if given else 10.0,
                                                 timeout_given=given),
                      ContainerVerbReply, timeout=(args.timeout if given else 300) + 150)


async def rename(args, ctx) -> int:
    from shared import subjects
    from shared.messages.verbs import VERB_RENAME, ContainerVerbReply, RenameRequest
    host, c = await locate(ctx, args.container)
    client = await ctx.bus()
    await client.request(subjects.agent(host, VERB_RENAME), RenameRequest(container=c.id, name=args.new_name),
                         ContainerVerbReply)
    return 0


def port_lines(c, private: str | None) -> list[str]:
    """docker port's lines: `80/tcp -> 0.0.0.0:8080`, or only `0.0.0.0:8080` for one port asked."""
    from shared.errors import NotFound
    if private:
        num, _, proto = private.partition("/")
        proto = proto or "tcp"
        hits = [p for p in c.network.ports if str(p.container_port) == num and p.protocol == proto]
        if not hits:
            raise NotFound(f"no public port '{num}/{proto}' published for {c.name}")
        return [f"{p.host_ip}:{p.host_port}" for p in hits]
    return [f"{p.container_port}/{p.protocol} -> {p.host_ip}:{p.host_port}"
            for p in sorted(c.network.ports, key=lambda p: (p.container_port, p.protocol, p.host_ip))]


async def port(args, ctx) -> int:
    from shared import subjects
    from shared.messages.agent import VERB_INSPECT, ContainerRef, ContainerReply
    host, c = await locate(ctx, args.container)
    client = await ctx.bus()
    reply = await client.request(subjects.agent(host, VERB_INSPECT), ContainerRef(container=c.id), ContainerReply)
    for line in port_lines(reply.container, args.private_port):
        print(line)
    return 0


async def pause(args, ctx) -> int:
    from shared.messages.agent import ContainerRef
    from shared.messages.verbs import VERB_PAUSE, ContainerVerbReply
    return await each(args, ctx, VERB_PAUSE, lambda cid: ContainerRef(container=cid), ContainerVerbReply)


async def unpause(args, ctx) -> int:
    from shared.messages.agent import ContainerRef
    from shared.messages.verbs import VERB_UNPAUSE, ContainerVerbReply
    return await each(args, ctx, VERB_UNPAUSE, lambda cid: ContainerRef(container=cid), ContainerVerbReply)


async def update(args, ctx) -> int:
    from services.cli.commands.containers import parse_size
    from shared.errors import InvalidArgument
    from shared.messages.verbs import VERB_UPDATE, ContainerVerbReply, UpdateRequest
    fields = {
        "memory": parse_size(args.memory) if args.memory else None,
        "memory_swap": parse_size(args.memory_swap, allow_unlimited=True) if args.memory_swap else None,
        "cpu_shares": args.cpu_shares, "cpus": args.cpus, "pids_limit": args.pids_limit, "restart": args.restart,
    }
    if all(v is None for v in fields.values()):
        raise InvalidArgument("you must provide one or more flags when using this command")
    return await each(args, ctx, VERB_UPDATE, lambda cid: UpdateRequest(container=cid, **fields),
                      ContainerVerbReply)


# ---- top, stats --------------------------------------------------------------------------

def register_inspecting(sub: Any) -> None:
    p = sub.add_parser("top", help="the running processes of a container")
    p.add_argument("container")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="PS OPTIONS", help="options for ps (default -ef)")
    p.set_defaults(func=top)

    p = sub.add_parser("stats", help="live resource usage of containers")
    p.add_argument("-a", "--all", action="store_true", help="all containers (default: the running ones)")
    p.add_argument("--no-stream", action="store_true", help="one sample, then exit")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--format", help="a Go template ({{.Name}}\\t{{.CPUPerc}}), table TEMPLATE, or json")
    p.add_argument("containers", nargs="*")
    p.set_defaults(func=stats, loopless=True)  # read-only bus verbs: shared.bus_blocking, no event loop

    p = sub.add_parser("diff", help="files changed in a container against its image (A, C, D)")
    p.add_argument("container")
    p.set_defaults(func=diff)


async def top(args, ctx) -> int:
    from shared import subjects
    from shared.messages.verbs import VERB_TOP, TopReply, TopRequest
    host, c = await locate(ctx, args.container)
    client = await ctx.bus()
    r = await client.request(subjects.agent(host, VERB_TOP), TopRequest(container=c.id, ps_args=args.ps_args),
                             TopReply)
    ctx.print_table(r.titles, r.processes)
    return 0


STATS_HEADERS = {"Container": "CONTAINER", "ID": "CONTAINER ID", "Name": "NAME", "CPUPerc": "CPU %",
                 "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O",
                 "BlockIO": "BLOCK I/O", "PIDs": "PIDS"}
_STATS_TABLE = "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}"


def _size(n: float, base: int, units: tuple[str, ...]) -> str:
    """docker's go-units: four significant digits (HumanSize decimal, BytesSize binary)."""
    i = 0
    while n >= base and i < len(units) - 1:
        n /= base
        i += 1
    return f"{n:.4g}{units[i]}"


def human_size(n: float) -> str:
    return _size(n, 1000, ("B", "kB", "MB", "GB", "TB", "PB"))


def bytes_size(n: float) -> str:
    return _size(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"))


def stats_row(ref: str, pre, cur, no_trunc: bool = False) -> dict[str, str]:
    """docker's columns from two samples: CPU % over the time between them."""
    if not cur.running:
        return {"Container": ref, "ID": cur.id if no_trunc else cur.id[:12], "Name": cur.name, "CPUPerc": "0.00%",
                "MemUsage": "0B / 0B", "MemPerc": "0.00%", "NetIO": "0B / 0B", "BlockIO": "0B / 0B", "PIDs": "0"}
    cpu = 0.0
    if pre is not None and pre.running:
        d_cpu, d_sys = cur.cpu_ns - pre.cpu_ns, cur.system_ns - pre.system_ns
        if d_cpu > 0 and d_sys > 0:
            cpu = d_cpu / d_sys * cur.online_cpus * 100.0
    mem_pct = cur.memory_usage / cur.memory_limit * 100.0 if cur.memory_limit else 0.0
    return {"Container": ref, "ID": cur.id if no_trunc else cur.id[:12], "Name": cur.name, "CPUPerc": f"{cpu:.2f}%",
            "MemUsage": f"{bytes_size(cur.memory_usage)} / {bytes_size(cur.memory_limit)}",
            "MemPerc": f"{mem_pct:.2f}%", "NetIO": f"{human_size(cur.net_rx)} / {human_size(cur.net_tx)}",
            "BlockIO": f"{human_size(cur.block_read)} / {human_size(cur.block_write)}", "PIDs": str(cur.pids)}


async def _samples(args, ctx, strict: bool = True) -> list[tuple[str, object]]:
    """(row name, StatsSample) of every container to show: one scatter-gather in which each
    agent samples all of its own at once (not a `ps` to find them, then a request each).
    Not `strict` (a stream's later rounds), a named container that is gone leaves the table."""
    from services.cli.locate import fleet, one_of
    from shared.errors import DockyardError, NotFound
    from shared.messages.agent import fleet as fleet_subject
    from shared.messages.verbs import VERB_STATS, FleetStatsReply, FleetStatsRequest
    agents = await fleet(ctx)
    if not agents:
        if args.containers and strict:
            raise NotFound(f"no such container: {args.containers[0]} (no runtime-agent is running)")
        return []
    client = await ctx.bus()
    replies = await client.gather(fleet_subject(VERB_STATS), FleetStatsRequest(match=args.containers, all=args.all),
                                  FleetStatsReply, timeout=2.0, expect=len(agents))
    hits = [(r.host, s) for r in replies for s in r.samples]
    if args.containers:
        out = []
        for ref in args.containers:
            try:
                out.append((ref, one_of(ref, [h for h in hits if h[1].ref == ref], key=lambda s: s.stats)[1]))
            except DockyardError:
                if strict:
                    raise
        return out
    return [(s.stats.name, s) for _, s in sorted(hits, key=lambda h: h[1].created, reverse=True)]


async def stats(args, ctx) -> int:
    from services.cli.formatting import render
    fmt = args.format or _STATS_TABLE
    first = True
    while True:
        rows = [stats_row(ref, s.pre, s.stats, args.no_trunc) for ref, s in await _samples(args, ctx, first)]
        first = False
        lines = render(fmt, rows, STATS_HEADERS)
        if not args.no_stream and sys.stdout.isatty():
            sys.stdout.write("\033[2J\033[H")  # docker redraws the table in place
        sys.stdout.write("".join(ln + "\n" for ln in lines))
        sys.stdout.flush()
        if args.no_stream:
            return 0
        await _sleep(ctx, 1.0)


async def _sleep(ctx, seconds: float) -> None:
    if ctx.loopless:
        import time
        time.sleep(seconds)  # nothing else runs in a loopless command: the wait blocks nobody
        return
    import asyncio
    await asyncio.sleep(seconds)


async def diff(args, ctx) -> int:
    from shared import subjects
    from shared.messages.agent import ContainerRef
    from shared.messages.verbs import VERB_DIFF, DiffReply
    host, c = await locate(ctx, args.container)
    client = await ctx.bus()
    r = await client.request(subjects.agent(host, VERB_DIFF), ContainerRef(container=c.id), DiffReply, timeout=120)
    if ctx.json_output:
        ctx.print_json([{"Kind": {"C": 0, "A": 1, "D": 2}[ch.kind],  # docker's API codes
                         "Path": ch.path} for ch in r.changes])
        return 0
    sys.stdout.write("".join(f"{ch.kind} {ch.path}\n" for ch in r.changes))
    return 0
