"""The first node's join exchange (`dockyard.fleet.*`), run by the `up` that holds the signing key.

Tokens and hosts are recorded in DATA_DIR/credentials/fleet.json (0600): a token only by
the SHA-256 of its secret, so the file never holds a usable secret. A removed host's user
keys go into the account JWT's revocation list, which this node's nats-server reloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Callable

import msgspec

from shared import bus, credentials, dataplane_sign, fleet, natsnodes, permissions, tls
from shared.errors import Conflict, InvalidArgument, NotFound, Unauthenticated

log = logging.getLogger("dockyard.fleet")
STATE_FILE = "fleet.json"
# what a token may grant: a registry-gateway also signs users and tokens, which stays on the first node
JOINABLE = ("runtime-agent", "builder", "layer-store", "garbage-collector")
MAX_TTL = 7 * 86400
_ADDRESS = re.compile(r"[0-9A-Za-z][0-9A-Za-z.:-]{0,252}")  # an IP (v4, v6) or a DNS name


class _Token(msgspec.Struct):
    digest: str  # sha256 of the secret
    exp: int
    services: list[str]
    used_by: str = ""


class _State(msgspec.Struct):
    tokens: dict[str, _Token] = {}
    hosts: dict[str, fleet.Host] = {}
    revoked: dict[str, int] = {}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def revoked_keys(data_dir: Path) -> dict[str, int]:
    """The user keys `fleet remove` revoked: the account JWT lists them on every start."""
    try:
        return msgspec.json.decode((credentials.credentials_dir(data_dir) / STATE_FILE).read_bytes(),
                                   type=_State).revoked
    except FileNotFoundError:
        return {}


class FleetExchange:
    """`seeds` are the NATS URLs a joiner dials, `leafnodes` where a joiner's own NATS node
    connects; `reload_trust` rewrites the server config with the current revocations and
    makes the local nats-server read it."""

    def __init__(self, data_dir: Path, authority: credentials.Authority, *, seeds: list[str], registry: str,
                 reload_trust: Callable[[dict[str, int]], None], first: fleet.Host | None = None,
                 leafnodes: list[str] = ()):
        self.data_dir = Path(data_dir)
        self.first = first  # this node, listed first by `fleet ls`
        self.authority = authority
        self.seeds = seeds
        self.leafnodes = list(leafnodes)
        self.registry = registry
        self.reload_trust = reload_trust
        self.path = credentials.credentials_dir(data_dir) / STATE_FILE
        self.state = (msgspec.json.decode(self.path.read_bytes(), type=_State) if self.path.exists() else _State())
        self.svc: bus.BusService | None = None
        self.nc = None  # the exchange's own bus connection, from start()
        self._tasks: set[asyncio.Task] = set()  # heartbeats of removed hosts being forgotten

    def _save(self) -> None:
        now = time.time()
        self.state.tokens = {k: t for k, t in self.state.tokens.items() if t.exp > now or t.used_by}
        credentials.write_secret(self.path, msgspec.json.encode(self.state))

    async def start(self, nc) -> None:
        self.nc = nc
        self.svc = bus.BusService(nc, fleet.SERVICE, description="join exchange of the fleet")
        self.svc.endpoint(fleet.TOKEN, fleet.TokenRequest, self.token, empty_ok=True)
        self.svc.endpoint(fleet.CA, fleet.CARequest, self.ca, empty_ok=True)
        self.svc.endpoint(fleet.JOIN, fleet.JoinRequest, self.join)
        self.svc.endpoint(fleet.LIST, fleet.ListRequest, self.list)
        self.svc.endpoint(fleet.REMOVE, fleet.RemoveRequest, self.remove)
        await self.svc.start()

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.svc is not None:
            await self.svc.stop()

    async def token(self, req: fleet.TokenRequest) -> fleet.TokenReply:
        bad = [s for s in req.services if s not in JOINABLE]
        if bad or not req.services:
            raise InvalidArgument(f"a join token grants some of {', '.join(JOINABLE)}; not {', '.join(bad) or 'none'}")
        if not 0 < req.ttl <= MAX_TTL:
            raise InvalidArgument(f"--ttl must be between 1s and {MAX_TTL // 86400} days")
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        exp = int(time.time() + req.ttl)
        joiner = credentials.read_creds_text(self.authority.issue(
            f"joiner-{token_id}", permissions.joiner(token_id), expires=exp))
        self.state.tokens[token_id] = _Token(digest=_digest(secret), exp=exp, services=list(req.services))
        self._save()
        ca = self._ca_pem()
        return fleet.TokenReply(token=fleet.encode_token(fleet.JoinToken(
            seeds=self.seeds, jwt=joiner.jwt, seed=joiner.seed, secret=secret, exp=exp,
            services=list(req.services), ca=tls.fingerprint(ca) if ca else "")))

    def _ca_pem(self) -> bytes:
        """The fleet CA certificate; empty when this node serves loopback only (no TLS)."""
        try:
            return (credentials.credentials_dir(self.data_dir) / tls.CA_FILE).read_bytes()
        except FileNotFoundError:
            return b""

    async def ca(self, req: fleet.CARequest) -> fleet.CAReply:
        ca = self._ca_pem()
        if not ca:
            raise NotFound("this fleet has no CA: its first node listens on loopback only")
        return fleet.CAReply(pem=ca.decode())

    def _find(self, secret: str) -> _Token:
        digest = _digest(secret)
        for t in self.state.tokens.values():
            if hmac.compare_digest(t.digest, digest):
                return t
        raise Unauthenticated("the join token is not one this fleet issued (forged, or from another fleet)")

    async def join(self, req: fleet.JoinRequest) -> fleet.JoinReply:
        t = self._find(req.secret)
        if t.used_by:
            raise Unauthenticated(f"the join token was already used (by host {t.used_by}); "
                                  "make a new one with `dockyard fleet token`")
        if time.time() >= t.exp:
            raise Unauthenticated("the join token has expired; make a new one with `dockyard fleet token`")
        extra = [s for s in req.services if s not in t.services]
        if extra:
            raise Unauthenticated(f"the join token does not grant {', '.join(extra)} (it grants "
                                  f"{', '.join(t.services)})")
        if not _ADDRESS.fullmatch(req.listen):
            raise InvalidArgument(f"{req.listen!r} is not an address other hosts can reach (--listen)")
        taken = req.host in self.state.hosts or (self.first is not None and req.host == self.first.host)
        if taken or any(c in req.host for c in ".*> \t/") or not req.host:  # a node's name is its host's too
            raise Conflict(f"host {req.host!r} is already in the fleet or is not a valid host id")
        grants = {permissions.principal(n, req.host): permissions.service(n, agent_id=req.host) for n in req.services}
        grants[permissions.SUPERVISOR] = permissions.service(permissions.SUPERVISOR)
        creds = {p: self.authority.issue(p, perms) for p, perms in grants.items()}
        files = {}
        if req.node and self.leafnodes:  # its NATS node: relays what its services may do, revoked with them
            creds[permissions.node(req.host)] = self.authority.issue(
                permissions.node(req.host), permissions.relay(list(grants.values())))
            files[natsnodes.TRUST_FILE] = self.authority.server_config(self.state.revoked)
        if "layer-store" in req.services:
            files[dataplane_sign.KEY_FILE.name] = dataplane_sign.load_key(self.data_dir).hex() + "\n"
        ca = self._ca_pem()
        if ca:  # the host's own certificate, for the servers it runs (its NATS node)
            try:
                cert, key = tls.issue_node_cert(credentials.credentials_dir(self.data_dir), req.host, [req.listen])
            except ValueError as e:
                raise InvalidArgument(f"no certificate can name {req.listen!r} (--listen): {e}") from e
            files.update({tls.CA_FILE: ca.decode(), tls.NODE_CERT_FILE: cert.decode(),
                          tls.NODE_KEY_FILE: key.decode()})
        t.used_by = req.host
        self.state.hosts[req.host] = fleet.Host(
            host=req.host, listen=req.listen, services=list(req.services), joined_at=time.time(),
            node=permissions.node(req.host) in creds,
            users=[credentials.jwt_claims(credentials.read_creds_text(c).jwt)["sub"] for c in creds.values()])
        self._save()
        log.info("host %s joined the fleet with %s", req.host, ", ".join(req.services))
        return fleet.JoinReply(creds=creds, files=files, seeds=self.seeds, registry=self.registry,
                               leafnodes=self.leafnodes if permissions.node(req.host) in creds else [])

    async def list(self, req: fleet.ListRequest) -> fleet.ListReply:
        joined = sorted(self.state.hosts.values(), key=lambda h: h.joined_at)
        return fleet.ListReply(hosts=([self.first] if self.first else []) + joined)

    async def remove(self, req: fleet.RemoveRequest) -> fleet.RemoveReply:
        if self.first is not None and req.host == self.first.host:
            raise Conflict(f"{req.host} is the first node: it holds the fleet's keys and cannot be removed")
        host = self.state.hosts.pop(req.host, None)
        if host is None:
            raise NotFound(f"no host {req.host!r} in the fleet (see `dockyard fleet ls`)")
        now = int(time.time())
        self.state.revoked.update({k: now for k in host.users})
        self._save()
        await asyncio.to_thread(self.reload_trust, self.state.revoked)
        if "runtime-agent" in host.services:
            # One more heartbeat may be in flight while the server reloads: forget it again later.
            t = asyncio.get_running_loop().create_task(self._forget_heartbeat(req.host, again_after=3.0))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        log.info("host %s removed; %d credentials revoked", req.host, len(host.users))
        return fleet.RemoveReply(revoked=len(host.users))

    async def _forget_heartbeat(self, host: str, again_after: float) -> None:
        """A removed host is gone, not lost: `agents` and placement stop showing it."""
        from shared import subjects
        for delay in (0.0, again_after):
            await asyncio.sleep(delay)
            try:
                kv = await self.nc.jetstream().key_value(subjects.KV_AGENTS)
                await kv.delete(bus.kv_key(host))
            except Exception as e:  # noqa: BLE001 - no bucket, or the bus is going down: nothing to forget
                log.warning("could not forget the heartbeat of removed host %s: %s", host, e)
                return
