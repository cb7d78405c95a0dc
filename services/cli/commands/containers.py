"""`run`, `ps`, `logs`, `stop`, `start`, `kill`, `rm`, `inspect`, `agents`: containers on the fleet.

The CLI talks to the bus only: the fleet's heartbeats (KV `dockyard-agents`) for
placement and `agents`, a scatter-gather `ps` to find which agent holds a container,
then that agent's own verb. Heavy imports stay inside the handlers: start-up time is
part of every `dockyard run`.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from services.cli import runopts
from services.cli.commands import interactive
from services.cli.container_streams import SignalProxy, Stream

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str, *, allow_unlimited: bool = False) -> int:
    """docker's RAMInBytes: `200m`, `1G`, `512kb`, `1024` (binary units); `-1` if allowed."""
    from shared.errors import InvalidArgument
    t = text.strip().lower()
    if allow_unlimited and t == "-1":
        return -1
    num = t.rstrip("bkmgtp")
    unit = t[len(num):]
    if unit.endswith("b") and len(unit) == 2:
        unit = unit[0]
    try:
        value = float(num)
    except ValueError:
        raise InvalidArgument(f"invalid size: {text!r}") from None
    if unit not in _UNITS or value < 0:
        raise InvalidArgument(f"invalid size: {text!r}")
    return int(value * _UNITS[unit])


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

    p = sub.add_parser("logs", help="a container's output")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--tail", default="all")
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("container")
    p.set_defaults(func=logs)

    p = sub.add_parser("stop", help="stop containers (TERM, then KILL after -t seconds)")
    p.add_argument("-t", "--time", "--timeout", dest="timeout", type=float,
                   help="seconds before KILL (default: the container's --stop-timeout, else 10)")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=stop)

    p = sub.add_parser("start", help="start stopped containers")
    interactive.add_start_flags(p)  # cli11: -a, -i
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=start)

    p = sub.add_parser("kill", help="send a signal to containers")
    p.add_argument("-s", "--signal", default="KILL")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=kill)

    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("-v", "--volumes", action="store_true", help="remove its anonymous volumes too")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=rm)

    p = sub.add_parser("inspect", help="low-level information on containers (JSON)")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=inspect)

    p = sub.add_parser("agents", help="the fleet of runtime-agents")
    p.add_argument("-q", "--quiet", action="store_true", help="only agent ids")  # runflags
    p.add_argument("--format", help="a Go template ({{.ID}}\\t{{.Status}}), table TEMPLATE, or json")
    p.set_defaults(func=agents, loopless=True)


# ---- the fleet -------------------------------------------------------------------------

async def fleet(ctx) -> list:
    """Live agents from their heartbeats, freshest first (lost ones left out)."""
    from shared.messages.agent import is_lost
    now = time.time()
    return [b for b in await heartbeats(ctx) if not is_lost(b, now)]


async def heartbeats(ctx) -> list:
    """Every agent's last heartbeat, live or lost, freshest first."""
    from shared import codec, subjects
    from shared.messages.agent import Heartbeat
    client = await ctx.bus()
    if hasattr(client, "kv_entries"):  # shared.bus_lite: the whole bucket in one round trip
        dec = codec.decoder(Heartbeat)
        beats = [dec.decode(v) for _, v in await client.kv_entries(subjects.KV_AGENTS)]
    else:
        beats = await _fleet_nats(client)
    return sorted(beats, key=lambda b: -b.time)


async def _fleet_nats(client) -> list:
    """Heartbeats through nats-py's KV (the full client: TLS or websocket URLs)."""
    import nats.js.errors
    from shared import subjects
    from shared.bus import TypedKV
    from shared.messages.agent import Heartbeat
    try:
        kv = await client.nc.jetstream().key_value(subjects.KV_AGENTS)
    except nats.js.errors.BucketNotFoundError:
        return []
    return [v for _, v, _ in await TypedKV(kv, Heartbeat).items()]


async def place(ctx, image: str, memory: int | None, pin: str | None) -> str:
    """The agent to run on (shared.placement); the agents' image lists are asked for only on a tie."""
    import dataclasses
    from shared import placement
    from shared.messages.agent import VERB_IMAGES, ImagesReply, ImagesRequest, fleet as fleet_subject
    now = time.time()
    hosts = [placement.Host.from_heartbeat(b, now) for b in await heartbeats(ctx)]
    wanted: frozenset[str] = frozenset()
    if not pin and len(placement.contenders(hosts, memory)) > 1:
        client = await ctx.bus()
        live = sum(not h.lost for h in hosts)
        replies = await client.gather(fleet_subject(VERB_IMAGES), ImagesRequest(), ImagesReply,
                                      timeout=1.0, expect=live)
        wanted, held = placement.locality(image, replies)
        hosts = [dataclasses.replace(h, layers=held.get(h.id, frozenset())) for h in hosts]
    return placement.choose(hosts, memory, wanted=wanted, pin=pin).id


async def find(ctx, ref: str, agents: list | None = None):
    """(agent id, Container) of the one container `ref` names across the fleet."""
    from shared.errors import InvalidArgument, NotFound
    from shared.messages.agent import VERB_PS, PsReply, PsRequest, fleet as fleet_subject
    agents = await fleet(ctx) if agents is None else agents
    if not agents:
        raise NotFound(f"no such container: {ref} (no runtime-agent is running)")
    client = await ctx.bus()
    replies = await client.gather(fleet_subject(VERB_PS), PsRequest(all=True, match=ref), PsReply,
                                  timeout=2.0, expect=len(agents))
    hits = [(r.host, c) for r in replies for c in r.containers]
    exact = [h for h in hits if h[1].id == ref or h[1].name == ref]
    hits = exact or hits
    if not hits:
        raise NotFound(f"no such container: {ref}")
    if len(hits) > 1:
        raise InvalidArgument(f"{ref} names {len(hits)} containers: "
                              + ", ".join(f"{c.id[:12]} on {h}" for h, c in hits))
    return hits[0]


async def agent_images(ctx, host: str) -> list:
    """The images an agent has pulled (for `dockyard images --host AGENT`): ImageRecords."""
    from shared import subjects
    from shared.messages.agent import VERB_IMAGES, ImagesReply, ImagesRequest
    client = await ctx.bus()
    reply = await client.request(subjects.agent(host, VERB_IMAGES), ImagesRequest(), ImagesReply)
    return reply.images


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
    now = time.time()
    rows = []
    for c in containers:
        cmd = " ".join(c.config.args)
        if not args.no_trunc and len(cmd) > 20:
            cmd = cmd[:19] + "…"
        rows.append([c.id if args.no_trunc else c.id[:12], c.config.image, f'"{cmd}"',
                     _ago(c.created, now), _status(c, now) + psview.health_suffix(c),
                     ", ".join(_port(p) for p in c.network.ports), c.name, c.host]
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


async def logs(args, ctx) -> int:
    from shared import subjects
    from shared.errors import InvalidArgument
    from shared.messages.agent import VERB_LOGS, LogsReply, LogsRequest
    if args.tail == "all":
        n = -1
    elif args.tail.isdigit():
        n = int(args.tail)
    else:
        raise InvalidArgument(f"invalid --tail {args.tail!r}: a number or 'all'")
    host, c = await find(ctx, args.container)
    client = await ctx.bus()
    async with Stream(client, timestamps=args.timestamps) as stream:
        await client.request(subjects.agent(host, VERB_LOGS),
                             LogsRequest(container=c.id, follow=args.follow, tail=n, timestamps=args.timestamps,
                                         stream_inbox=stream.inbox), LogsReply)
        end = await stream.done
    if end.error:
        ctx.error(end.error)
        return 1
    return 0


async def _each(args, ctx, verb: str, make, reply_type, *, timeout: float = 30.0) -> int:
    from shared import subjects
    from shared.errors import DockyardError, PermissionDenied
    client = await ctx.bus()
    agents = await fleet(ctx)
    rc = 0
    for ref in args.containers:
        try:
            host, c = await find(ctx, ref, agents)
            await client.request(subjects.agent(host, verb), make(c.id), reply_type, timeout=timeout)
            print(ref)
        except PermissionDenied:
            raise  # the verb is refused, not this container
        except DockyardError as e:
            ctx.error(e.message)
            rc = 1
    return rc


async def stop(args, ctx) -> int:
    from shared.messages.agent import VERB_STOP, ContainerReply, StopRequest
    given = args.timeout is not None
    req = lambda cid: StopRequest(container=cid, timeout=args.timeout if given else 10.0,  # noqa: E731
                                  timeout_given=given)
    return await _each(args, ctx, VERB_STOP, req, ContainerReply, timeout=(args.timeout if given else 300) + 30)


async def start(args, ctx) -> int:
    from shared.messages.agent import VERB_START, ContainerReply, StartRequest
    if args.attach or args.interactive:
        return await interactive.start_attached(args, ctx)
    return await _each(args, ctx, VERB_START, lambda cid: StartRequest(container=cid), ContainerReply, timeout=120)


async def kill(args, ctx) -> int:
    from shared.messages.agent import VERB_KILL, ContainerReply, KillRequest
    return await _each(args, ctx, VERB_KILL, lambda cid: KillRequest(container=cid, signal=args.signal),
                       ContainerReply)


async def rm(args, ctx) -> int:
    from shared.messages.agent import VERB_RM, RmReply, RmRequest
    return await _each(args, ctx, VERB_RM, lambda cid: RmRequest(container=cid, force=args.force,
                                                                volumes=args.volumes), RmReply, timeout=60)


async def inspect(args, ctx) -> int:
    from services.cli import psview
    from shared import subjects
    from shared.messages.agent import VERB_INSPECT, ContainerRef, ContainerReply
    client = await ctx.bus()
    agents = await fleet(ctx)
    out = []
    for ref in args.containers:
        host, c = await find(ctx, ref, agents)
        reply = await client.request(subjects.agent(host, VERB_INSPECT), ContainerRef(container=c.id), ContainerReply)
        out.append(psview.inspect_extras(reply.container, _inspect_view(reply.container)))  # runflags
    ctx.print_json(out)
    return 0


def _networks_view(c) -> dict:
    """docker's NetworkSettings.Networks: the default bridge's address and every user network's."""
    out = {}
    if c.network.ip and c.config.network == "bridge":
        out["bridge"] = {"IPAddress": c.network.ip, "IPPrefixLen": c.network.prefixlen,
                         "Gateway": c.network.gateway, "Aliases": None, "NetworkID": ""}
    for e in c.network.endpoints:
        out[e.network] = {"IPAddress": e.ip, "IPPrefixLen": e.prefixlen, "Gateway": e.gateway,
                          "MacAddress": e.mac, "Aliases": e.aliases, "NetworkID": e.network_id,
                          "Interface": e.interface}
    return out


def _inspect_view(c) -> dict:
    """docker-inspect's shape for the fields people script against, plus dockyard's own."""
    from shared.codec import to_builtins
    st = c.state
    return {
        "Id": c.id, "Name": c.name, "Created": c.created, "Host": c.host,
        "Image": c.config.image_digest, "ImageName": c.config.image,
        "State": {"Status": "paused" if st.paused else st.status, "Running": st.status == "running",
                  "Paused": st.paused, "Pid": st.pid,
                  "ExitCode": st.exit_code if st.exit_code is not None else 0, "OOMKilled": st.oom_killed,
                  "Error": st.error, "StartedAt": st.started_at, "FinishedAt": st.finished_at,
                  "RestartCount": st.restart_count},
        "Config": {"Image": c.config.image, "Entrypoint": c.config.entrypoint, "Cmd": c.config.cmd,
                   "Env": c.config.env, "WorkingDir": c.config.working_dir, "User": c.config.user,
                   "Hostname": c.config.hostname, "Labels": c.config.labels},
        "HostConfig": {"Memory": c.config.limits.memory or 0, "MemorySwap": c.config.limits.memory_swap or 0,
                       "CpuShares": c.config.limits.cpu_shares or 0, "NetworkMode": c.config.network,
                       "AutoRemove": c.config.auto_remove,
                       "RestartPolicy": {"Name": c.config.restart.name,
                                         "MaximumRetryCount": c.config.restart.maximum_retry_count},
                       "Binds": [f"{v.name if v.kind == 'volume' else v.source}:{v.destination}"
                                 f"{':ro' if v.readonly else ''}" for v in c.config.volumes],
                       "PortBindings": c.config.publish},
        "NetworkSettings": {"IPAddress": c.network.ip, "IPPrefixLen": c.network.prefixlen,
                            "Gateway": c.network.gateway,
                            "Ports": [to_builtins(p) for p in c.network.ports],
                            "Networks": _networks_view(c)},  # networks
        "LogPath": c.log_path,
        # volumes: docker's Mounts
        "Mounts": [{"Type": v.kind, "Name": v.name, "Source": v.source, "Destination": v.destination,
                    "RW": not v.readonly} for v in c.config.volumes],
    }


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


# ---- formatting ----------------------------------------------------------------------

def _port(p) -> str:
    return f"{p.host_ip}:{p.host_port}->{p.container_port}/{p.protocol}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _human(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 1:
        return "Less than a second"
    for size, name in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if s >= size:
            n = s // size
            return f"{n} {name}{'s' if n != 1 else ''}"
    return f"{s} seconds"


def _ago(text: str, now: float) -> str:
    from shared.messages.agent import unix_time
    t = unix_time(text)
    return f"{_human(now - t)} ago" if t else ""


def _status(c, now: float) -> str:
    from shared.messages.agent import unix_time
    st = c.state
    if st.status == "running":
        t = unix_time(st.started_at)
        up = f"Up {_human(now - t)}" if t else "Up"
        return f"{up} (Paused)" if st.paused else up  # verbs: docker's paused status
    if st.status == "exited":
        t = unix_time(st.finished_at)
        return f"Exited ({st.exit_code}) {_human(now - t)} ago" if t else f"Exited ({st.exit_code})"
    return st.status.capitalize()
