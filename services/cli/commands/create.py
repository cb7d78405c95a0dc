"""`create`: a container made like `run -d` makes it, not started (`start` starts it)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from services.cli.commands import containers
    # `create` takes exactly `run`'s flags: borrow run's parser as a parent instead of a second list.
    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    containers.register(scratch)
    p = sub.add_parser("create", help="create a new container (start it with `start`)",
                       parents=[scratch.choices["run"]], add_help=False, conflict_handler="resolve")
    p.set_defaults(func=create)


async def create(args, ctx) -> int:
    from services.cli.commands.containers import run
    args.detach, args.create_only = True, True
    return await run(args, ctx)
