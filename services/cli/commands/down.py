"""`dockyard down [--containers] [-t SECONDS]`: stop the stack `dockyard up` runs for a data dir.

The stack is found from DATA_DIR/stack.json (the pid of `up`, the id of its agent). Its
containers outlive it by design (they survive an agent restart); `--containers` stops
them first, each with the stop signal, then KILL after `-t` seconds, as `docker stop`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

DEFAULT_STOP_TIMEOUT = 10.0
UP_EXIT_TIMEOUT = 60.0  # `up` gives each service 15 s, then NATS its own time


def register(sub) -> None:
    from services.cli.commands.stack import _stack_options
    p = sub.add_parser("down", help="stop the stack `dockyard up` started (and, with --containers, its containers)")
    _stack_options(p)
    p.add_argument("--containers", action="store_true", help="stop the containers of the stack's agent first")
    p.add_argument("-t", "--timeout", type=float, default=DEFAULT_STOP_TIMEOUT, metavar="SECONDS",
                   help=f"seconds a container gets to stop before it is killed (default {DEFAULT_STOP_TIMEOUT:.0f})")
    p.set_defaults(func=down)


async def down(args, ctx) -> int:
    from shared import stackfile
    from shared.errors import InvalidArgument, NotFound, Unavailable
    if args.timeout < 0:
        raise InvalidArgument(f"invalid --timeout {args.timeout}: seconds, 0 or more")
    data = ctx.config.data_path
    info = stackfile.read(data)
    if info is None or not info.up_pid:
        raise NotFound(f"no stack is running for {data} (no stack.json there)")
    if not is_up_process(info.up_pid):
        stackfile.remove(data)  # `up` was killed and could not remove it
        raise NotFound(f"no stack is running for {data} (`dockyard up` pid {info.up_pid} is gone; "
                       "its stack.json is removed)")
    rc = 0
    if args.containers and info.agent_id:
        rc = await stop_containers(ctx, info.agent_id, args.timeout)
    await ctx.close()  # the bus goes away with the stack
    os.kill(info.up_pid, signal.SIGTERM)
    if not await _gone(info.up_pid, UP_EXIT_TIMEOUT):
        raise Unavailable(f"`dockyard up` (pid {info.up_pid}) did not stop within {UP_EXIT_TIMEOUT:.0f} s; "
                          f"see {data / 'logs'}")
    print(f"stopped the stack of {data}")
    return rc


async def stop_containers(ctx, agent_id: str, timeout: float) -> int:
    """Stop every running container of `agent_id`, all at once; 1 if one could not be stopped."""
    from shared import subjects
    from shared.errors import DockyardError
    from shared.messages.agent import VERB_PS, VERB_STOP, ContainerReply, PsReply, PsRequest, StopRequest
    client = await ctx.bus()
    try:
        running = (await client.request(subjects.agent(agent_id, VERB_PS), PsRequest(), PsReply)).containers
    except DockyardError as e:
        ctx.error(f"the containers of agent {agent_id} were not stopped: {e.message}")
        return 1

    async def stop(c) -> bool:
        try:
            await client.request(subjects.agent(agent_id, VERB_STOP),
                                 StopRequest(container=c.id, timeout=timeout, timeout_given=True),
                                 ContainerReply, timeout=timeout + 30)
        except DockyardError as e:
            ctx.error(f"{c.name}: {e.message}")
            return False
        print(c.name)
        return True

    done = await asyncio.gather(*(stop(c) for c in running))
    return 0 if all(done) else 1


def is_up_process(pid: int) -> bool:
    """`pid` is a live `dockyard up` (not a zombie, not a reused pid of something else)."""
    proc = Path("/proc") / str(pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = [w for w in (proc / "cmdline").read_bytes().decode(errors="replace").split("\0") if w]
    except OSError:
        return False
    return state not in ("Z", "X") and "up" in argv


async def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_up_process(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True
