"""`logs`, `stop`, `start`, `kill`, `rm`: one container's output and state changes, at its agent.

Each finds the agent that holds the container (services.cli.locate) and asks that agent's
own verb; `start -a/-i` opens a session on the container's stdio (commands/interactive).
"""

from __future__ import annotations

from typing import Any

from services.cli import locate
from services.cli.commands import interactive
from services.cli.container_streams import Stream


def register(sub: Any) -> None:
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
    host, c = await locate.find(ctx, args.container)
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
    agents = await locate.fleet(ctx)
    rc = 0
    for ref in args.containers:
        try:
            host, c = await locate.find(ctx, ref, agents)
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
