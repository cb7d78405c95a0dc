"""Entry point of the `dockyard` command."""

from __future__ import annotations

import gc

# A command lives for a fraction of a second: collecting cycles while it imports is wasted time.
gc.disable()

import sys  # noqa: E402

from services.cli.commands import MODULES


def build_parser(only: str | None = None) -> "argparse.ArgumentParser":
    import importlib
    parser = _parser_class()(prog="dockyard", description="Build, push, pull and run container images.")
    parser.add_argument("--nats", dest="nats_url", help="NATS URL (env DOCKYARD_NATS_URL)")
    parser.add_argument("--data-dir", dest="data_dir", help="data directory (env DOCKYARD_DATA_DIR)")
    parser.add_argument("--creds", help="bus credentials file (env DOCKYARD_CREDS; default: the data "
                                        "dir's admin.creds if readable)")
    parser.add_argument("--context", dest="context_name",
                        help="the stack to talk to (env DOCKYARD_CONTEXT; see `dockyard context`)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [MODULES[only]] if only in MODULES else sorted(set(MODULES.values()))
    for name in modules:
        try:
            mod = importlib.import_module(f"services.cli.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"services.cli.commands.{name}":
                continue  # an area not built yet
            raise
        mod.register(sub if only not in MODULES else _Only(sub, only))
    return parser


def _parser_class() -> type:
    """argparse's parser (and, through add_subparsers, every subcommand's), its help width
    read as shutil.get_terminal_size reads it without importing shutil (bz2, lzma, fnmatch:
    ~4 ms of every command on our interpreter)."""
    import argparse  # not for `--version`

    class Parser(argparse.ArgumentParser):
        def _get_formatter(self) -> argparse.HelpFormatter:
            return self.formatter_class(prog=self.prog, width=_help_width())
    return Parser


def _help_width() -> int:
    """COLUMNS, else stdout's terminal width, else 80; less the 2 argparse keeps free."""
    import os
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


class _Only:
    """The subparsers of one command: a module's other commands are not built at all
    (`run`'s hundred flags cost `dockyard ps` ~3 ms of argparse)."""

    def __init__(self, sub: object, name: str):
        self._sub, self._name = sub, name

    def add_parser(self, name: str, **kwargs: object) -> object:
        if name == self._name:
            return self._sub.add_parser(name, **kwargs)
        return _Discard()

    def __getattr__(self, attr: str) -> object:
        return getattr(self._sub, attr)


class _Discard:
    """A parser nobody will use: every call is accepted and ignored."""

    def __getattr__(self, attr: str) -> object:
        return lambda *args, **kwargs: self


GLOBAL_OPTIONS_WITH_VALUE = {"--nats", "--data-dir", "--context", "--creds"}


def _command_name(argv: list[str]) -> str | None:
    """The first word that is not a global option or its value."""
    it = iter(argv)
    for a in it:
        if a in GLOBAL_OPTIONS_WITH_VALUE:
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `--json` may stand anywhere (`dockyard ps --json`), for every command alike.
    json_output = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    # Import only the module of the command asked for: start-up time is part of every command.
    first = _command_name(argv)
    if first is None and ("--version" in argv or "-v" in argv):
        from services.cli.version import banner
        print(banner())
        return 0
    parser = build_parser(first)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # `dockyard up --nats URL --data-dir DIR` as well as `dockyard --nats URL up`
    args.nats_url = args.nats_url or getattr(args, "cmd_nats_url", None)
    args.data_dir = args.data_dir or getattr(args, "cmd_data_dir", None)
    args.creds = args.creds or getattr(args, "cmd_creds", None)
    _import_msgspec()
    import msgspec
    from shared.errors import DockyardError, PermissionDenied
    from services.cli import contexts
    from services.cli.context import CliContext

    async def run(ctx: CliContext) -> int:
        try:
            return await args.func(args, ctx) or 0
        finally:
            await ctx.close()

    try:
        name, cfg = contexts.resolve(context=args.context_name, nats_url=args.nats_url, data_dir=args.data_dir)
        if args.creds:
            cfg = msgspec.structs.replace(cfg, creds=args.creds)
        if getattr(args, "loopless", False):
            # A read-only command whose every await is a bus verb: no event loop to import.
            from shared import bus_blocking
            try:
                return bus_blocking.drive(run(CliContext(cfg, json_output=json_output, context=name,
                                                         loopless=True)))
            except bus_blocking.NeedsEventLoop:
                pass  # e.g. TLS without the fleet CA: nats-py, on an event loop
        import asyncio
        return asyncio.run(run(CliContext(cfg, json_output=json_output, context=name)))
    except PermissionDenied as e:
        CliContext.error(_refusal(first or "", e))
        return 125
    except DockyardError as e:
        CliContext.error(e.message)
        return 125 if e.code != "NOT_FOUND" else 1
    except KeyboardInterrupt:
        return 130


def _import_msgspec() -> None:
    """msgspec without typing_extensions (and the inspect, ast, dis it loads: ~10 ms of
    every command on our interpreter).

    msgspec takes get_type_hints and Required/NotRequired from typing_extensions if it
    can, else from typing; on Python 3.11 typing's are the same for our Structs (no
    TypedDict, no Annotated). The block lasts for this one import: a later import of
    typing_extensions (rich, nats-py) gets the real module.
    """
    if "msgspec" in sys.modules or "typing_extensions" in sys.modules:
        return
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # makes msgspec's import fail
    try:
        import msgspec  # noqa: F401
    finally:
        del sys.modules["typing_extensions"]


def _refusal(verb: str, e: Exception) -> str:
    """`permission denied: run needs role operator`, when the bus refused a subject of that role."""
    from shared.permissions import required_role
    needed = required_role(str(getattr(e, "detail", "") or ""))
    return f"permission denied: {verb} needs role {needed}" if needed else str(getattr(e, "message", e))


if __name__ == "__main__":
    sys.exit(main())
