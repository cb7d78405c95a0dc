"""`run -i/-t`, `attach`, `exec`: a process's stdio in the user's terminal, over the bus.

The agent holds the stdio (services/runtime_agent/interactive); this side is a session on
it (services/cli/stdio_session.py). With a tty the terminal is raw while attached and
restored on every way out; the detach keys (ctrl-p,ctrl-q) leave the process running.
The process's exit code becomes the CLI's.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from services.cli.terminal import DEFAULT_DETACH_KEYS

UNKNOWN_EXIT = 255  # the process's end was not seen (removed under us)


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes"):
        return True
    if t in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def add_run_flags(p: Any) -> None:
    """`run`'s -i, -t, --detach-keys, --sig-proxy."""
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open and send ours to it")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("--detach-keys", default=DEFAULT_DETACH_KEYS, help="the keys that detach (with -t)")
    p.add_argument("--sig-proxy", type=_bool, default=True, metavar="BOOL",
                   help="without -t, send the CLI's SIGINT/SIGTERM to the container (default true)")


def register(sub: Any) -> None:
    p = sub.add_parser("attach", help="attach to a running container's stdin, stdout and stderr")
    p.add_argument("--no-stdin", action="store_true", help="do not send our stdin")
    p.add_argument("--sig-proxy", type=_bool, default=True, metavar="BOOL",
                   help="without a tty, send the CLI's SIGINT/SIGTERM to the container (default true)")
    p.add_argument("--detach-keys", default=DEFAULT_DETACH_KEYS)
    p.add_argument("container")
    p.set_defaults(func=attach)

    p = sub.add_parser("exec", help="run a command in a running container")
    p.add_argument("-d", "--detach", action="store_true", help="run it in the background")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open and send ours to it")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VAL]")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="NAME=VALUE lines (a bare NAME from our environment), before -e")  # cli11
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user", help="user[:group] by name or number")
    p.add_argument("--privileged", action="store_true",
                   help="every capability the agent has (admin role only)")  # cli11
    p.add_argument("--detach-keys", default=DEFAULT_DETACH_KEYS)
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=exec_)


def _env(items: list[str]) -> list[str]:
    out = []
    for e in items:
        if "=" in e:
            out.append(e)
        elif e in os.environ:  # docker passes `-e NAME` on from the client's environment
            out.append(f"{e}={os.environ[e]}")
    return out


def _check_tty(ctx, tty: bool, stdin: bool) -> bool:
    if tty and stdin and not os.isatty(0):
        ctx.error("the input device is not a TTY")
        return False
    return True


def _code(end, ctx) -> int:
    from services.cli.stdio_session import DETACHED
    if end == DETACHED:
        return 0
    if end.kind == "error":
        ctx.error(end.error)
        return 1
    return end.exit_code if end.exit_code is not None else UNKNOWN_EXIT


# ---- run -i / -t ---------------------------------------------------------------------

def apply_run_flags(req, args):
    """`req` (a RunRequest) with -i/-t in it."""
    if not (args.interactive or args.tty):
        return req
    import msgspec
    from shared.messages.interactive import StdioConfig
    return msgspec.structs.replace(req, stdio=StdioConfig(open_stdin=args.interactive, tty=args.tty))


def wants_session(args) -> bool:
    return (args.interactive or args.tty) and not args.detach


async def run_attached(args, ctx, client, host: str, req, request_run) -> int:
    """`run -i/-t` without -d: the session is opened with the container, before it starts."""
    import msgspec
    from services.cli.container_streams import SignalProxy
    from services.cli.stdio_session import ClientSession
    from services.cli.terminal import RawMode, parse_detach_keys
    if not _check_tty(ctx, args.tty, args.interactive):
        return 1
    keys = parse_detach_keys(args.detach_keys) if args.tty else None
    async with ClientSession(client, host, stdin=args.interactive, tty=args.tty, detach_keys=keys) as sess:
        req = msgspec.structs.replace(req, detach=True, attach=sess.spec())
        with RawMode(0, enabled=args.tty and args.interactive):
            if args.sig_proxy and not args.tty:
                with SignalProxy(client, host, ctx) as proxy:
                    await proxy.start(request_run(client, host, req))
                    end = await sess.run()
            else:
                with _leave_on_signals(sess):
                    await request_run(client, host, req)
                    end = await sess.run()
    return _code(end, ctx)


class _leave_on_signals:
    """SIGTERM/SIGHUP to the CLI (not proxied): detach, so the terminal is restored on the way out."""

    def __init__(self, sess):
        self.sess = sess

    def __enter__(self):
        import asyncio
        import signal
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.sess.leave)
        return self

    def __exit__(self, *exc):
        import asyncio
        import signal
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


# ---- attach --------------------------------------------------------------------------

async def attach(args, ctx) -> int:
    from services.cli.locate import find
    host, c = await find(ctx, args.container)
    stdin = not args.no_stdin and c.config.stdio.open_stdin
    return await _session(args, ctx, host, c, stdin, _attach_request(host, c.id))


def _attach_request(host: str, cid: str):
    """What opens a session on a running container's stdio: the agent's `attach`."""
    from shared import subjects
    from shared.messages.interactive import AttachReply, AttachRequest

    def request(client, spec):
        return client.request(subjects.agent(host, subjects.AGENT_ATTACH), AttachRequest(container=cid, attach=spec),
                              AttachReply)
    return request


async def _session(args, ctx, host: str, c, stdin: bool, request) -> int:
    """A session on `c`'s stdio that `request(client, spec)` opens at the agent; its exit code."""
    from services.cli.container_streams import SignalProxy
    from services.cli.stdio_session import ClientSession
    from services.cli.terminal import RawMode, parse_detach_keys
    keys = parse_detach_keys(args.detach_keys)
    client = await ctx.bus()
    tty = c.config.stdio.tty
    if not _check_tty(ctx, tty, stdin):
        return 1
    async with ClientSession(client, host, stdin=stdin, tty=tty, detach_keys=keys if tty else None) as sess:
        with RawMode(0, enabled=tty and stdin):
            if args.sig_proxy and not tty:
                with SignalProxy(client, host, ctx) as proxy:
                    proxy.cid = c.id
                    await request(client, sess.spec())
                    end = await sess.run()
            else:
                with _leave_on_signals(sess):
                    await request(client, sess.spec())
                    end = await sess.run()
    return _code(end, ctx)


# ---- start -a / -i (cli11) -------------------------------------------------------------

def add_start_flags(p: Any) -> None:
    """`start`'s -a, -i, --detach-keys (docker's; --sig-proxy is true when attached)."""
    p.add_argument("-a", "--attach", action="store_true", help="attach stdout and stderr, end with its exit code")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin too")
    p.add_argument("--detach-keys", default=DEFAULT_DETACH_KEYS)
    p.add_argument("--sig-proxy", type=_bool, default=True, metavar="BOOL",
                   help="with -a and without a tty, send the CLI's SIGINT/SIGTERM to the container")


async def start_attached(args, ctx) -> int:
    """`start -a/-i CONTAINER`: the session opens with the start, so no output is missed;
    one already running is attached to, as docker does."""
    from services.cli.locate import find
    from shared import subjects
    from shared.errors import InvalidArgument
    from shared.messages.agent import VERB_START, ContainerReply, StartRequest
    if len(args.containers) != 1:
        raise InvalidArgument("you cannot start and attach multiple containers at once")
    host, c = await find(ctx, args.containers[0])
    stdin = args.interactive and c.config.stdio.open_stdin
    if c.state.status == "running":
        return await _session(args, ctx, host, c, stdin, _attach_request(host, c.id))

    def request(client, spec):
        return client.request(subjects.agent(host, VERB_START), StartRequest(container=c.id, attach=spec),
                              ContainerReply, timeout=120)
    return await _session(args, ctx, host, c, stdin, request)


# ---- exec ----------------------------------------------------------------------------

async def exec_(args, ctx) -> int:
    from services.cli.locate import find
    from services.cli.stdio_session import ClientSession
    from services.cli.terminal import RawMode, parse_detach_keys
    from shared import subjects
    from shared.errors import InvalidArgument
    from shared.messages.interactive import ExecReply, ExecRequest
    if not args.command:
        raise InvalidArgument("exec needs a command: dockyard exec CONTAINER COMMAND [ARG...]")
    keys = parse_detach_keys(args.detach_keys) if args.tty else None
    env = _env(args.env)
    if args.env_file:  # before -e, docker's order
        from services.cli.runopts import read_env_file
        env = [e for f in args.env_file for e in read_env_file(f)] + env
    host, c = await find(ctx, args.container)
    client = await ctx.bus()
    # --privileged has a subject of its own: the server lets only admins publish there.
    subject = subjects.agent(host, subjects.AGENT_EXEC_PRIVILEGED if args.privileged else subjects.AGENT_EXEC)
    req = ExecRequest(container=c.id, args=args.command, env=env, workdir=args.workdir or "",
                      user=args.user or "", tty=args.tty, stdin=args.interactive, detach=args.detach,
                      privileged=args.privileged)
    if args.detach:
        await client.request(subject, req, ExecReply, timeout=60)
        return 0
    if not _check_tty(ctx, args.tty, args.interactive):
        return 1
    import msgspec
    async with ClientSession(client, host, stdin=args.interactive, tty=args.tty, detach_keys=keys) as sess:
        with RawMode(0, enabled=args.tty and args.interactive), _leave_on_signals(sess):
            await client.request(subject, msgspec.structs.replace(req, attach=sess.spec()), ExecReply, timeout=60)
            end = await sess.run()
    return _code(end, ctx)
