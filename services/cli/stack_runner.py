"""Starting and stopping a whole stack on one machine: embedded NATS plus one process per service."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import nats.errors

from shared import bus, credentials, fleet, natsnodes, permissions, stackfile, tls
from shared.config import Config, split_host_port
from shared.errors import Unavailable
from shared.natsserver import EmbeddedNats

log = logging.getLogger("dockyard.up")
READY_TIMEOUT = 60.0
MAX_RESTARTS_PER_MINUTE = 5
NATS = "nats-server"
# the registry-gateway serves on the listening socket `up` passes it as this fd
REGISTRY_FD_ENV = "DOCKYARD_REGISTRY_FD"
# services with no HTTP listener of their own get a metrics listener on a free port
METRICS_ADDR_ENV = "DOCKYARD_METRICS_ADDR"
HTTP_SERVICES = frozenset({"registry-gateway", "layer-store"})


def bind_listener(addr: str, *, fallback: bool) -> tuple[socket.socket, str]:
    """A listening TCP socket on `addr` (port 0: any free port), and the address it got.

    With `fallback`, a taken port gives a free one instead of an error: the kernel picks
    it in the same bind, so no other process can take it between choosing and listening.
    """
    host, port = split_host_port(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=1024)
    except OSError as e:
        if not fallback or port == 0:
            raise Unavailable(f"cannot listen on {addr}: {e.strerror}") from e
        sock = socket.create_server((host, 0), family=family, backlog=1024)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"{shown}:{bound}"


async def discover(client: bus.BusClient, timeout: float = 0.5, expect: int | None = None) -> list[dict[str, Any]]:
    """Every service instance answering `$SRV.INFO` (sorted by name); `expect` ends the wait early."""
    infos = await client.gather("$SRV.INFO", None, dict, timeout=timeout, expect=expect)
    out = []
    for i in infos:
        meta = i.get("metadata") or {}
        out.append({"name": i.get("name", "?"), "id": i.get("id", "?"), "version": i.get("version", "?"),
                    "endpoints": len(i.get("endpoints") or []),
                    "detail": " ".join(f"{k}={v}" for k, v in sorted(meta.items()))})
    return sorted(out, key=lambda r: (r["name"], r["id"]))



async def instance_answers(nc: Any, name: str, instance: str) -> bool:
    """Whether the service process carrying `instance` answers `$SRV.PING.name` (on a fleet, other hosts' do too)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
        deadline = time.monotonic() + 0.25
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:  # nobody (else) answered in time
                return False
            try:
                metadata = msgspec.json.decode(msg.data).get("metadata") or {}
            except (msgspec.DecodeError, AttributeError):
                continue
            if metadata.get("instance") == instance:
                return True
        return False
    finally:
        await sub.unsubscribe()


class StackRunner:
    """`nats_port` None joins the configured NATS; 0 embeds one on any free port. With the
    fallbacks, a taken port (NATS's, the registry's) becomes a free one, reported in
    `notices`: for defaults, where the user asked for no port in particular."""

    def __init__(self, cfg: Config, *, services: list[str], nats_port: int | None,
                 nats_fallback: bool = False, registry_fallback: bool = False, listen: str = "127.0.0.1",
                 joined: Any = None):
        self.cfg = cfg
        self.joined = joined  # a joined host's fleet (commands.fleet.Joined): it runs a NATS node on `nats_port`
        self.listen = listen  # the address other hosts of a fleet reach this one at
        self.services = services
        self.nats_port = nats_port
        self.nats_fallback = nats_fallback
        self.registry_fallback = registry_fallback
        self.nats: EmbeddedNats | None = None
        self.registry_sock: socket.socket | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.instances: dict[str, str] = {}  # the DOCKYARD_INSTANCE each started process carries
        self.notices: list[str] = []
        self.exit_code = 0
        self.logs = cfg.data_path / "logs"
        self.creds: dict[str, Path] = {}  # principal -> its .creds file
        self.exchange: Any = None  # the first node's join exchange (services.cli.fleet_exchange)
        self.authority: credentials.Authority | None = None

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.nats_port is not None and self.joined is None:
            conf = await asyncio.to_thread(self._issue_credentials)
            # off loopback, joined hosts' NATS nodes connect to this one as leaf nodes
            leaf_tls = (natsnodes.leaf_tls(credentials.credentials_dir(self.cfg.data_path))
                        if tls.needs_tls(self.listen) else None)
            await self._start_nats(conf, leaf_tls=leaf_tls)
            self.cfg = msgspec.structs.replace(self.cfg, nats_url=self.nats.url)
        else:  # someone else's NATS: the credentials they put in the data dir, if any
            for p in (self.cfg.data_path / credentials.CREDENTIALS_DIR).glob("*.creds"):
                self.creds[p.stem] = p
            if self.joined is not None:  # our own node first, the fleet's seeds when it is gone
                await self._start_nats(await asyncio.to_thread(self._node_config), jetstream=False, host="127.0.0.1")
                self.cfg = msgspec.structs.replace(self.cfg, nats_url=",".join([self.nats.url, *self.joined.seeds]))
        if "registry-gateway" in self.services:
            self._listen_registry()
        nc = await bus.connect(self.cfg.nats_url, name="dockyard-up", ca=self.cfg.nats_ca_file,
                               creds=str(self.creds.get(permissions.SUPERVISOR, self.cfg.bus_creds)))
        try:
            await self._wait_jetstream(nc)
            for name in self.services:
                self._spawn(name)
            await asyncio.gather(*(self._wait_ready(nc, n) for n in self.services))
            await self._ensure_admin(nc)
        finally:
            await nc.drain()
        if self.authority is not None:
            await self._start_exchange()
        self._write_stack_file()

    async def _start_nats(self, conf: Path, *, jetstream: bool = True, leaf_tls: str | None = None,
                          host: str = "") -> None:
        self.nats = EmbeddedNats(self.cfg.data_path / "nats", host=host or self.listen, port=self.nats_port,
                                 fallback=self.nats_fallback, log_file=self.logs / "nats.log", config_file=conf,
                                 jetstream=jetstream, leaf_tls=leaf_tls,
                                 leaf_port=natsnodes.DEFAULT_LEAF_PORT if self.nats_port else 0)
        await asyncio.to_thread(self.nats.start)
        if self.nats_port and self.nats.port != self.nats_port:
            self._notice(f"NATS port {self.nats_port} is taken; NATS listens on {self.nats.port}")
        if self.nats_port and leaf_tls is not None and self.nats.leaf_port != natsnodes.DEFAULT_LEAF_PORT:
            self._notice(f"leaf node port {natsnodes.DEFAULT_LEAF_PORT} is taken; joined hosts' NATS nodes "
                         f"connect on {self.nats.leaf_port}")

    def _node_config(self) -> Path:
        """A joined host's node config, from the trust and credential the exchange gave it."""
        cdir = credentials.credentials_dir(self.cfg.data_path)
        creds = credentials.creds_path(self.cfg.data_path, permissions.node(self.joined.host))
        account = credentials.jwt_claims(credentials.read_creds(creds).jwt)["nats"]["issuer_account"]
        conf = cdir / "nats-server.conf"
        credentials.write_secret(conf, natsnodes.joined_node_config(
            name=self.cfg.host_id, trust=(cdir / natsnodes.TRUST_FILE).read_text(), cred_dir=cdir,
            hubs=self.joined.leafnodes, creds=creds, account_pub=account).encode())
        return conf

    async def _start_exchange(self) -> None:
        """The join exchange of a first node: it holds the keys that sign a joining host's credentials."""
        from services.cli.fleet_exchange import FleetExchange
        first = fleet.Host(host=self.cfg.host_id, listen=self.listen, services=list(self.services),
                           joined_at=time.time(), first=True)
        self.exchange = FleetExchange(self.cfg.data_path, self.authority, seeds=[self.cfg.nats_url],
                                      registry=self.cfg.registry_addr, reload_trust=self._reload_trust,
                                      first=first, leafnodes=[self.nats.leaf_url] if self.nats.leaf_url else [])
        self.exchange_nc = await bus.connect(self.cfg.nats_url, name="dockyard-fleet", ca=self.cfg.nats_ca_file,
                                             creds=str(self.creds[fleet.SERVICE]))
        await self.exchange.start(self.exchange_nc)

    def _reload_trust(self, revoked: dict[str, int]) -> None:
        """The server config with `revoked` in the account JWT, in force in the running
        nats-server when this returns."""
        conf = credentials.credentials_dir(self.cfg.data_path) / "nats-server.conf"
        credentials.write_secret(conf, self._server_config(revoked).encode())
        if self.nats is not None:
            self.nats.reload()

    def _issue_credentials(self) -> Path:
        """Each service's credential, the supervisor's and the local administrator's, from the
        permission table, and the server config that demands them. Keys are made on first start;
        the JWTs are signed again on every start, so a changed table applies after an upgrade."""
        from services.cli.fleet_exchange import revoked_keys
        cdir = credentials.credentials_dir(self.cfg.data_path)
        authority = self.authority = credentials.Authority(cdir)
        grants = {permissions.principal(n, self.cfg.host_id): permissions.service(n, agent_id=self.cfg.host_id)
                  for n in self.services}
        grants[permissions.SUPERVISOR] = permissions.service(permissions.SUPERVISOR)
        grants[fleet.SERVICE] = permissions.service(fleet.SERVICE)
        for principal, perms in grants.items():
            path = credentials.creds_path(self.cfg.data_path, principal)
            credentials.write_secret(path, authority.issue(principal, perms).encode())
            self.creds[principal] = path
        credentials.write_secret(credentials.creds_path(self.cfg.data_path, credentials.ADMIN), authority.issue(
            permissions.person(credentials.ADMIN), permissions.role(credentials.ADMIN, "admin")).encode())
        https = self._https_hosts()
        if tls.needs_tls(self.listen) or https:
            # Off loopback every bus connection and HTTP listener is TLS, verified against the fleet CA made here.
            tls.ensure_ca(cdir)
            names = [h for h in dict.fromkeys([self.listen, *https]) if h not in ("0.0.0.0", "::")]
            tls.ensure_node_cert(cdir, self.cfg.host_id, names)
        conf = cdir / "nats-server.conf"
        credentials.write_secret(conf, self._server_config(revoked_keys(self.cfg.data_path)).encode())
        return conf

    def _https_hosts(self) -> list[str]:
        """The addresses our HTTP listeners serve HTTPS on, which the node certificate must name
        (a wildcard names none: --listen and 127.0.0.1 stand for it)."""
        layer_store = os.environ.get("DOCKYARD_LAYER_STORE_ADDR", f"{self.listen}:0")
        return [split_host_port(a)[0] for a in (self.cfg.registry_addr, layer_store) if tls.serves_https(a)]

    def _server_config(self, revoked: dict[str, int]) -> str:
        """Trust and accounts (signed again each time: the server checks them on every reload),
        the node's name, and TLS for clients when this node listens off loopback."""
        conf = self.authority.server_config(revoked) + natsnodes.server_name(self.cfg.host_id)
        if tls.needs_tls(self.listen):
            conf += tls.server_block(credentials.credentials_dir(self.cfg.data_path))
            conf += natsnodes.default_js_domain(self.authority.account_pub)  # for joined hosts' nodes
        return conf

    def _listen_registry(self) -> None:
        """Bind the registry's port here, once: every gateway process `up` (re)starts serves
        on this socket, so its address is known before any service starts and survives
        the gateway's restarts."""
        wanted = self.cfg.registry_addr
        self.registry_sock, addr = bind_listener(wanted, fallback=self.registry_fallback)
        if split_host_port(wanted)[1] not in (0, split_host_port(addr)[1]):
            self._notice(f"registry port {wanted} is taken; the registry listens on {addr}")
        self.cfg = msgspec.structs.replace(self.cfg, registry_addr=addr)

    def _notice(self, text: str) -> None:
        log.warning("%s", text)
        self.notices.append(text)

    def _spawn(self, name: str) -> None:
        # what other hosts dial: the layer-store's data plane and the agent's address follow --listen
        env = {"DOCKYARD_LAYER_STORE_ADDR": f"{self.listen}:0", "DOCKYARD_AGENT_ADDRESS": self.listen,
               **os.environ, "DOCKYARD_NATS_URL": self.cfg.nats_url,
               "DOCKYARD_DATA_DIR": self.cfg.data_dir, "DOCKYARD_REGISTRY_ADDR": self.cfg.registry_addr}
        if self.cfg.nats_ca_file:
            env["DOCKYARD_NATS_CA"] = self.cfg.nats_ca_file
        own = self.creds.get(permissions.principal(name, self.cfg.host_id))
        if own is not None:
            env["DOCKYARD_CREDS"] = str(own)
        env.pop(REGISTRY_FD_ENV, None)
        self.instances[name] = env[bus.INSTANCE_ENV] = secrets.token_hex(8)
        if name in HTTP_SERVICES or os.environ.get(METRICS_ADDR_ENV, "").strip().lower() == "off":
            env.pop(METRICS_ADDR_ENV, None)
        else:  # a free port each (`dockyard status` lists it): one fixed port cannot serve three
            env[METRICS_ADDR_ENV] = f"{self.listen}:0"
        fds: tuple[int, ...] = ()
        if name == "registry-gateway" and self.registry_sock is not None:
            fds = (self.registry_sock.fileno(),)
            env[REGISTRY_FD_ENV] = str(fds[0])
        with open(self.logs / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "serve", name], env=env, pass_fds=fds,
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)

    def _write_stack_file(self) -> None:
        # A person's commands on a joined host go to the first node: its own node relays only
        # what the host's services may do.
        nats_url = ",".join([*self.joined.seeds, self.nats.url]) if self.joined is not None else self.cfg.nats_url
        stackfile.write(self.cfg.data_path, stackfile.StackInfo(
            services=self.services, nats_url=nats_url, registry=self.cfg.registry_addr,
            pids={n: p.pid for n, p in self.procs.items()}, up_pid=os.getpid(),
            nats_pid=self.nats.proc.pid if self.nats and self.nats.proc else 0,
            agent_id=self.cfg.host_id if "runtime-agent" in self.services else ""))

    async def _wait_jetstream(self, nc: Any) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                await nc.jetstream().account_info()
                return
            except Exception as e:  # JetStream answers a moment after the port opens
                if time.monotonic() > deadline:
                    if self.joined is not None:  # JetStream is the first node's, across the leaf connection
                        raise Unavailable(f"this host's NATS node reaches no first node at "
                                          f"{', '.join(self.joined.leafnodes)} (see {self.logs / 'nats.log'}): "
                                          f"{e}") from e
                    raise Unavailable(f"JetStream not available on {self.cfg.nats_url}: {e}") from e
                await asyncio.sleep(0.05)

    async def _wait_ready(self, nc: Any, name: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        proc = self.procs[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Unavailable(f"{name} exited with {proc.returncode} during start-up; "
                                  f"see {self.logs / (name + '.log')}:\n{self._tail(name)}")
            if await instance_answers(nc, name, self.instances[name]):
                return
            await asyncio.sleep(0.05)
        raise Unavailable(f"{name} did not become ready within {READY_TIMEOUT:.0f}s; "
                          f"see {self.logs / (name + '.log')}")

    async def _ensure_admin(self, nc: Any) -> None:
        """First start: the `admin` user, with a random password in DATA_DIR/admin-password (0600)."""
        if "registry-gateway" not in self.services:
            return
        from shared.messages.auth import EnsureAdminReply, EnsureAdminRequest
        from shared.subjects import REGISTRY_ENSURE_ADMIN
        reply = await bus.BusClient(nc).request(
            REGISTRY_ENSURE_ADMIN, EnsureAdminRequest(password_file=str(self.cfg.data_path / "admin-password")),
            EnsureAdminReply, timeout=30)
        log.info("admin user %s", "created" if reply.created else "exists")

    def _tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def banner(self) -> str:
        lines = [f"dockyard is up ({len(self.procs)} services: {', '.join(self.procs)})", *self.notices,
                 f"  NATS:      {self.cfg.nats_url}"]
        if "registry-gateway" in self.procs:
            lines.append(f"  registry:  {self.cfg.registry_base_url}")
            pw = self.cfg.data_path / "admin-password"
            if pw.exists():
                lines.append(f"  login:     admin, password in {pw}")
        lines.append(f"  data:      {self.cfg.data_dir} (logs in {self.logs})")
        lines.append("Press Ctrl-C to stop.")
        return "\n".join(lines)

    async def wait(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; a service or the embedded nats-server that dies is restarted
        (with back-off) like a supervisor would, and one that keeps dying stops the stack
        with exit code 1. NATS comes back on its port and store, so JetStream state stays."""
        restarts: dict[str, list[float]] = {}
        while not stop.is_set():
            for name in self._dead():
                recent = [t for t in restarts.get(name, []) if time.monotonic() - t < 60]
                if len(recent) >= MAX_RESTARTS_PER_MINUTE:
                    log.error("%s died %d times in a minute; stopping the stack", name, len(recent))
                    self.exit_code = 1
                    return
                restarts[name] = recent + [time.monotonic()]
                await asyncio.sleep(0.2 * 2 ** len(recent))
                log.info("restarting %s", name)
                if name == NATS:
                    try:
                        await asyncio.to_thread(self.nats.start)
                    except Unavailable as e:  # counted as one more death on the next round
                        log.error("nats-server did not come back: %s", e)
                else:
                    self._spawn(name)
                self._write_stack_file()
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    def _dead(self) -> list[str]:
        """What exited since the last look, logged; NATS first, since the services need it."""
        dead = []
        if self.nats is not None and not self.nats.running:
            code = self.nats.proc.returncode if self.nats.proc else None
            log.error("nats-server exited with %s; see %s", code, self.logs / "nats.log")
            dead.append(NATS)
        for name, p in self.procs.items():
            if p.poll() is not None:
                log.error("%s exited with %s\n%s", name, p.returncode, self._tail(name))
                dead.append(name)
        return dead

    async def stop(self, timeout: float = 15.0) -> None:
        if self.exchange is not None:
            await self.exchange.stop()
            await self.exchange_nc.drain()
            self.exchange = None
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, p in self.procs.items():
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if p.poll() is None:
                log.warning("%s did not stop in time; killing it", name)
                p.kill()
                p.wait()
        self.procs.clear()
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
        if self.registry_sock is not None:
            self.registry_sock.close()
        stackfile.remove(self.cfg.data_path)
