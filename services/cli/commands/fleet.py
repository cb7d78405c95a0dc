"""`dockyard fleet token|ls|remove`, and the joining side of `dockyard up --join`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec

JOINED_FILE = "fleet-join.json"  # in the data dir: how a joined host finds the fleet again on restart


class Joined(msgspec.Struct, frozen=True):
    host: str
    seeds: list[str]
    registry: str
    services: list[str]
    leafnodes: list[str] = []  # where this host's own NATS node connects; empty: a client only


def register(sub) -> None:
    p = sub.add_parser("fleet", help="hosts of the fleet: join tokens, listing, removal")
    fsub = p.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    t = fsub.add_parser("token", help="print a one-time join token for `dockyard up --join`")
    t.add_argument("--ttl", default="1h", help="how long the token may be used (default 1h)")
    t.add_argument("--services", default="runtime-agent",
                   help="comma-separated services the joining host may run (default runtime-agent)")
    t.set_defaults(func=token)
    ls = fsub.add_parser("ls", help="hosts of the fleet (the first node too): services, address, last seen")
    ls.set_defaults(func=list_hosts)
    rm = fsub.add_parser("remove", help="revoke a host's credentials and forget it")
    rm.add_argument("host")
    rm.set_defaults(func=remove)


async def token(args, ctx) -> int:
    from shared import fleet
    from shared.cron import parse_duration
    req = fleet.TokenRequest(ttl=parse_duration(args.ttl), services=[s for s in args.services.split(",") if s])
    reply = await (await ctx.bus()).request(fleet.TOKEN, req, fleet.TokenReply)
    print(reply.token)
    return 0


async def list_hosts(args, ctx) -> int:
    """Hosts as the exchange knows them, with the last heartbeat of each one's runtime-agent."""
    from services.cli.commands.containers import heartbeats
    from shared import fleet
    from shared.messages.agent import is_lost
    reply = await (await ctx.bus()).request(fleet.LIST, fleet.ListRequest(), fleet.ListReply)
    beats = {b.agent_id: b for b in await heartbeats(ctx)}
    now = time.time()
    rows = []
    for h in reply.hosts:
        b = beats.get(h.host)
        status = "-" if b is None else ("lost" if is_lost(b, now) else "ready")
        rows.append({**msgspec.to_builtins(h), "status": status, "last_seen": b.time if b else None})
    if ctx.json_output:
        ctx.print_json(rows)
        return 0
    ctx.print_table(["HOST", "ROLE", "ADDRESS", "SERVICES", "NATS", "STATUS", "LAST SEEN", "JOINED"],
                    [[r["host"], "first" if r["first"] else "joined", r["listen"], ",".join(r["services"]),
                      "jetstream" if r["first"] else ("leaf node" if r["node"] else "client"),
                      r["status"], "-" if r["last_seen"] is None else f"{max(0.0, now - r['last_seen']):.1f}s ago",
                      time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["joined_at"]))] for r in rows])
    return 0


async def remove(args, ctx) -> int:
    from shared import fleet
    reply = await (await ctx.bus()).request(fleet.REMOVE, fleet.RemoveRequest(host=args.host), fleet.RemoveReply)
    print(f"removed {args.host}: {reply.revoked} credentials revoked")
    return 0


def joined(data_dir: Path) -> Joined | None:
    """What an earlier `up --join` recorded: a restart rejoins with the credentials it got then."""
    try:
        return msgspec.json.decode((Path(data_dir) / JOINED_FILE).read_bytes(), type=Joined)
    except FileNotFoundError:
        return None


async def _pinned_ca(seeds: list[str], tok: Any, joiner_file: Path, cdir: Path) -> str:
    """The fleet CA, fetched over a connection not yet verified and kept only if it is the one
    the token pins; written to `cdir`. The secret goes only over a connection verified with it."""
    from shared import bus, credentials, fleet, tls
    from shared.errors import Unauthenticated
    try:
        nc = await bus.connect(",".join(seeds), name="dockyard-join", creds=str(joiner_file),
                               ca=tls.unverified_context())
    except Unauthenticated as e:
        raise Unauthenticated("the fleet refused the join token's credential: it is forged, expired "
                              "or from another fleet") from e
    try:
        reply = await bus.BusClient(nc).request(fleet.CA, fleet.CARequest(), fleet.CAReply, timeout=10)
    finally:
        await nc.drain()
    tls.check_pinned(reply.pem.encode(), tok.ca)
    path = cdir / tls.CA_FILE
    credentials.write_secret(path, reply.pem.encode())
    return str(path)


def _seeds(join_addr: str, seeds: list[str]) -> list[str]:
    """The token's seeds, with the address the user named first (host, or host:port)."""
    if not join_addr:
        return seeds
    if ":" not in join_addr:
        join_addr += ":" + seeds[0].rpartition(":")[2]
    first = f"nats://{join_addr}"
    return [first, *(s for s in seeds if s != first)]


async def join(cfg: Any, *, join_addr: str, token_text: str, listen: str, services: list[str],
               node: bool = True) -> Joined:
    """Trade the token's secret for this host's credentials (its NATS node's too, with `node`)
    and write them to the data dir."""
    from shared import bus, credentials, fleet
    from shared.errors import Unauthenticated
    tok = fleet.decode_token(token_text)
    seeds = _seeds(join_addr, tok.seeds)
    cdir = credentials.credentials_dir(cfg.data_path)
    joiner_file = cdir / "joiner.creds"
    credentials.write_secret(joiner_file, credentials.format_creds(tok.jwt, tok.seed.encode()).encode())
    try:
        ca = await _pinned_ca(seeds, tok, joiner_file, cdir) if tok.ca else ""
        try:
            nc = await bus.connect(",".join(seeds), name="dockyard-join", creds=str(joiner_file), ca=ca)
        except Unauthenticated as e:
            raise Unauthenticated("the fleet refused the join token's credential: it is forged, expired "
                                  "or from another fleet") from e
        try:
            reply = await bus.BusClient(nc).request(fleet.JOIN, fleet.JoinRequest(
                secret=tok.secret, host=cfg.host_id, listen=listen, services=services, node=node),
                fleet.JoinReply, timeout=30)
        finally:
            await nc.drain()
    finally:
        joiner_file.unlink(missing_ok=True)
    for principal, text in reply.creds.items():
        credentials.write_secret(credentials.creds_path(cfg.data_path, principal), text.encode())
    for name, text in reply.files.items():
        credentials.write_secret(cdir / Path(name).name, text.encode())
    state = Joined(host=cfg.host_id, seeds=reply.seeds, registry=reply.registry, services=services,
                   leafnodes=reply.leafnodes)
    credentials.write_secret(cfg.data_path / JOINED_FILE, msgspec.json.encode(state))
    return state
