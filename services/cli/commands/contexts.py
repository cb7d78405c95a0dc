"""`dockyard context create|ls|use|show|rm`: names for the stacks this user talks to."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("context", help="switch between stacks (like docker context)")
    csub = p.add_subparsers(dest="context_command", metavar="COMMAND")

    c = csub.add_parser("create", help="name a stack: its data dir, or a NATS URL and registry")
    c.add_argument("name")
    c.add_argument("--data-dir", dest="ctx_data_dir", metavar="DIR",
                   help="a stack `dockyard up --data-dir DIR` runs (its ports are read from DIR/stack.json)")
    c.add_argument("--nats", dest="ctx_nats", metavar="URL", help="a NATS URL, for a stack on another host")
    c.add_argument("--registry", dest="ctx_registry", metavar="HOST:PORT", help="its registry")
    c.add_argument("--description", default="")
    c.set_defaults(func=create)

    c = csub.add_parser("ls", help="list contexts (* marks the one in use)")
    c.set_defaults(func=ls)

    c = csub.add_parser("use", help="talk to this context from now on")
    c.add_argument("name")
    c.set_defaults(func=use)

    c = csub.add_parser("show", help="print the name of the context in use")
    c.set_defaults(func=show)

    c = csub.add_parser("rm", help="remove contexts")
    c.add_argument("names", nargs="+")
    c.set_defaults(func=rm)


def _check_name(name: str) -> None:
    from shared.errors import InvalidArgument
    from services.cli.contexts import DEFAULT
    if name == DEFAULT:
        raise InvalidArgument(f"{DEFAULT!r} is built in: it cannot be created or removed")
    if not name or not all(ch.isalnum() or ch in "._-" for ch in name):
        raise InvalidArgument(f"invalid context name {name!r}: use letters, digits, '.', '_', '-'")


async def create(args, ctx) -> int:
    from shared.config import split_host_port
    from shared.errors import AlreadyExists, InvalidArgument
    from services.cli import contexts
    _check_name(args.name)
    if not (args.ctx_data_dir or args.ctx_nats):
        raise InvalidArgument("a context needs --data-dir DIR or --nats URL")
    if args.ctx_registry:
        split_host_port(args.ctx_registry)
    f = contexts.load_file()
    if args.name in f.contexts:
        raise AlreadyExists(f"context {args.name!r} exists already")
    data_dir = str(Path(args.ctx_data_dir).expanduser().resolve()) if args.ctx_data_dir else ""
    f.contexts[args.name] = contexts.Context(data_dir=data_dir, nats_url=args.ctx_nats or "",
                                             registry=args.ctx_registry or "", description=args.description)
    contexts.save_file(f)
    print(args.name)
    return 0


def _state(c, cfg) -> str:
    """running / stopped for a local stack (its stack.json and `up`), "-" for a remote one."""
    from shared import stackfile
    from shared.natsserver import pid_alive
    if c is not None and not c.data_dir:
        return "-"
    info = stackfile.read(cfg.data_path)
    return "running" if info and info.up_pid and pid_alive(info.up_pid) else "stopped"


async def ls(args, ctx) -> int:
    from services.cli import contexts
    f = contexts.load_file()
    rows = []
    for name in [contexts.DEFAULT, *sorted(f.contexts)]:
        c = f.contexts.get(name)
        cfg = contexts.settings(name, f)
        rows.append({"name": name, "current": name == ctx.context, "description": c.description if c else "",
                     "data_dir": c.data_dir if c else cfg.data_dir, "nats_url": cfg.nats_url,
                     "registry": cfg.registry_addr, "state": _state(c, cfg)})
    if ctx.json_output:
        ctx.print_json(rows)
    else:
        ctx.print_table(["NAME", "DATA DIR", "NATS", "REGISTRY", "STATE", "DESCRIPTION"],
                        [[r["name"] + (" *" if r["current"] else ""), r["data_dir"] or "-", r["nats_url"] or "-",
                          r["registry"], r["state"], r["description"]] for r in rows])
    return 0


async def use(args, ctx) -> int:
    from shared.errors import NotFound
    from services.cli import contexts
    f = contexts.load_file()
    if args.name != contexts.DEFAULT and args.name not in f.contexts:
        raise NotFound(f"context {args.name!r} does not exist (see `dockyard context ls`)")
    f.current = "" if args.name == contexts.DEFAULT else args.name
    contexts.save_file(f)
    print(args.name)
    if os.environ.get("DOCKYARD_CONTEXT"):
        sys.stderr.write("dockyard: DOCKYARD_CONTEXT is set and overrides this choice\n")
    return 0


async def show(args, ctx) -> int:
    print(ctx.context)
    return 0


async def rm(args, ctx) -> int:
    from shared.errors import NotFound
    from services.cli import contexts
    f = contexts.load_file()
    for name in args.names:
        _check_name(name)
        if name not in f.contexts:
            raise NotFound(f"context {name!r} does not exist")
    for name in args.names:
        del f.contexts[name]
        if f.current == name:
            f.current = ""
    contexts.save_file(f)
    for name in args.names:
        print(name)
    return 0
