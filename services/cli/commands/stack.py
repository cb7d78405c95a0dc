"""`dockyard up`, `serve` and `status`: running the services."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from shared.errors import InvalidArgument

# service name (as on the bus) -> package under services/
SERVICES = {
    "layer-store": "layer_store",
    "registry-gateway": "registry_gateway",
    "builder": "builder",
    "runtime-agent": "runtime_agent",
    "garbage-collector": "garbage_collector",
}


def available_services() -> list[str]:
    """Services whose code exists: `up` starts these and no placeholders."""
    root = Path(__file__).resolve().parents[2]
    return [name for name, pkg in SERVICES.items() if (root / pkg / "service.py").exists()]


def _stack_options(p: argparse.ArgumentParser) -> None:
    """The global --nats/--data-dir, accepted after these commands too (main merges them)."""
    p.add_argument("--nats", dest="cmd_nats_url", metavar="URL", help="use this NATS instead of an embedded one")
    p.add_argument("--data-dir", dest="cmd_data_dir", metavar="DIR", help="default ~/.local/share/dockyard")
    p.add_argument("--creds", dest="cmd_creds", metavar="FILE", help="bus credentials (env DOCKYARD_CREDS)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start NATS (embedded) and every service on this machine")
    _stack_options(p)
    p.add_argument("--registry-addr",
                   help="where the registry listens (default 127.0.0.1:5000, or a free port if that is taken)")
    p.add_argument("--nats-port", type=int,
                   help="embedded NATS port (default 4222, or a free one if that is taken; 0: a free one)")
    p.add_argument("--only", action="append", choices=list(SERVICES), help="start only these services")
    p.add_argument("--services", help="comma-separated: the same as --only for each")
    p.add_argument("--listen", default="127.0.0.1",
                   help="the address other hosts reach this one at: NATS, layer-store, registry, "
                        "published ports (default 127.0.0.1)")
    p.add_argument("--join", metavar="ADDR", help="join the fleet whose first node is at ADDR (needs --token)")
    p.add_argument("--token", help="a line from `dockyard fleet token` on a host of the fleet")
    p.add_argument("--no-nats", action="store_true",
                   help="on a joining host: run no NATS node of its own, only connect to the fleet's")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("serve", help="run one service in this process")
    _stack_options(p)
    p.add_argument("service", choices=list(SERVICES))
    p.add_argument("--registry-addr", help="registry-gateway listen address")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="list the services answering on the bus")
    _stack_options(p)
    p.set_defaults(func=cmd_status)


def _config(args: argparse.Namespace, ctx: Any) -> Any:
    from shared import config
    return config.load(nats_url=args.nats_url, data_dir=args.data_dir, creds=args.creds,
                       registry_addr=getattr(args, "registry_addr", None))


def setup_logging(level: str, name: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")


async def cmd_serve(args: argparse.Namespace, ctx: Any) -> int:
    import gc
    gc.enable()  # main turns it off for short commands; a service runs for days
    cfg = _config(args, ctx)
    setup_logging(cfg.log_level, args.service)
    _use_service_creds(cfg, args.service)
    mod = importlib.import_module(f"services.{SERVICES[args.service]}.service")
    metrics = await _metrics_listener(cfg.data_dir)
    task = asyncio.create_task(mod.serve(cfg))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        if metrics is not None:
            await metrics.cleanup()
    return 0


async def _metrics_listener(data_dir: str) -> Any:
    """The service's own /metrics listener when DOCKYARD_METRICS_ADDR asks for one (the services
    with an HTTP listener of their own serve /metrics there as well)."""
    from shared.metrics import exposition
    addr = exposition.listen_addr(os.environ.get(exposition.ADDR_ENV))
    return await exposition.serve_standalone(addr, data_dir) if addr else None


def _use_service_creds(cfg: Any, service: str) -> None:
    """Every bus connection of this process uses the service's credential: --creds or
    DOCKYARD_CREDS, else the one `dockyard up` made for it in the data dir (shared.bus.connect
    reads DOCKYARD_CREDS)."""
    from shared import credentials, permissions
    own = str(credentials.creds_path(cfg.data_path, permissions.principal(service, cfg.host_id)))
    if cfg.creds or os.access(own, os.R_OK):
        os.environ["DOCKYARD_CREDS"] = cfg.creds or own  # an unreadable --creds fails the connect, loudly


async def cmd_up(args: argparse.Namespace, ctx: Any) -> int:
    import gc
    gc.enable()
    from services.cli.stack_runner import StackRunner
    from shared.config import DEFAULT_NATS_PORT
    cfg = _config(args, ctx)
    setup_logging(cfg.log_level, "up")
    services = (args.only or []) + [s for s in (args.services or "").split(",") if s]
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        raise InvalidArgument(f"unknown service {', '.join(unknown)}: one of {', '.join(SERVICES)}")
    registry_named = args.registry_addr is not None or "DOCKYARD_REGISTRY_ADDR" in os.environ
    if not registry_named and args.listen != "127.0.0.1":
        cfg = msgspec.structs.replace(cfg, registry_addr=f"{args.listen}:5000")
    nats_port = None  # join the NATS of --nats / DOCKYARD_NATS_URL
    if args.nats_url is None and "DOCKYARD_NATS_URL" not in os.environ:
        nats_port = DEFAULT_NATS_PORT if args.nats_port is None else args.nats_port
    cfg, nats_port, services, joined = await _join_if_asked(args, cfg, nats_port, services)
    # Ports nobody asked for by name may move when taken; ones asked for fail loudly instead.
    runner = StackRunner(cfg, services=services or available_services(), nats_port=nats_port,
                         nats_fallback=args.nats_port is None, registry_fallback=not registry_named,
                         listen=args.listen, joined=joined)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.start()
        print(runner.banner(), flush=True)
        await runner.wait(stop)
    finally:
        await runner.stop()
    return runner.exit_code


async def _join_if_asked(args: argparse.Namespace, cfg: Any, nats_port: int | None,
                         services: list[str]) -> tuple[Any, int | None, list[str], Any]:
    """With --join (or a data dir that joined before), the fleet's NATS and registry instead of
    our own; and what was joined, when this host runs a NATS node of its own (the port is its)."""
    from services.cli.commands import fleet
    state = fleet.joined(cfg.data_path)
    if args.join or args.token:
        if not (args.join and args.token):
            raise InvalidArgument("--join ADDR and --token TOKEN go together")
        if state is None:
            state = await fleet.join(cfg, join_addr=args.join, token_text=args.token, listen=args.listen,
                                     services=services or ["runtime-agent"], node=not args.no_nats)
    if state is None:
        return cfg, nats_port, services, None
    node = state.leafnodes and not args.no_nats and nats_port is not None
    return (msgspec.structs.replace(cfg, nats_url=",".join(state.seeds), registry_addr=state.registry),
            nats_port if node else None, services or state.services, state if node else None)


async def cmd_status(args: argparse.Namespace, ctx: Any) -> int:
    from services.cli import replication
    from services.cli.stack_runner import discover
    from shared import stackfile
    b = await ctx.bus()
    info = stackfile.read(ctx.config.data_path)
    expected = info.services if info else []
    found = await discover(b, expect=len(expected) or None)
    if not {n for n in expected} <= {f["name"] for f in found}:
        # The count was met by others (the fleet exchange, replicas): wait the whole window.
        found = await discover(b)
    names = {f["name"] for f in found}
    missing = [n for n in expected if n not in names]
    buckets = await replication.buckets(b.nc)
    if ctx.json_output:
        ctx.print_json({"services": found, "missing": missing, "buckets": buckets})
    else:
        ctx.print_table(["SERVICE", "ID", "VERSION", "ENDPOINTS", "DETAIL"],
                        [[f["name"], f["id"], f["version"], f["endpoints"], f["detail"]] for f in found]
                        + [[n, "-", "-", "-", "NOT ANSWERING"] for n in missing])
        if buckets:
            print()
            ctx.print_table(["BUCKET", "REPLICAS", "SERVERS", "VALUES", "NOTE"], replication.table_rows(buckets))
    return 1 if missing else 0
