"""Interactive containers and exec: stdio the agent holds, streamed to sessions over the bus.

`run -i/-t` containers get their stdio from `prepare` (called by the container manager
on each start): pipes, or a pty whose master the runtime sends to a console socket.
`attach` adds a session to a running container's stdio, `exec` starts a process with a
stdio of its own. Input of every session comes on one subject (`AGENT_STDIN`), handled in
order without waiting on a process. The bounds are in shared/messages/interactive.py.

A container's stdio outlives the agent: its shim keeps our ends open (the pty master, the
output pipes) and a restarted agent takes copies back with pidfd_getfd (`reclaim`). While
no agent reads, the process blocks once the kernel's buffer is full; a pipe stdin does
not survive (its end is the agent's alone, so that closing it is an EOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import time

import msgspec

from services.runtime_agent.interactive import execs
from services.runtime_agent.interactive.follow import follow_log, log_reader_at_end
from services.runtime_agent.interactive.pump import ProcessIO
from services.runtime_agent.interactive.session import Session
from shared import codec, subjects
from shared.bus import DETAIL_HEADER, ERROR_CODE_HEADER, ERROR_HEADER
from shared.errors import Conflict, DockyardError, InvalidArgument, NotFound, PermissionDenied, Unavailable
from shared.messages.agent import NEEDS_PRIVILEGE, Container
from shared.messages.common import ErrorReply
from shared.messages.interactive import (STDIN_CHUNK, AttachReply, AttachRequest, AttachSpec, ExecReply,
                                         ExecRequest, Input)
from shared.runtime.stdio import StdioSpec

log = logging.getLogger("dockyard.agent.interactive")

_REAP_EVERY = 2.0
_MAX_EXEC_REQUEST = 256 << 10


class Interactive:
    def __init__(self, nc, agent_id: str, containers, runtime):
        self.nc = nc
        self.agent_id = agent_id
        self.containers = containers
        self.runtime = runtime
        self.ios: dict[str, ProcessIO] = {}  # container id -> its init's stdio
        self.sessions: dict[str, tuple[ProcessIO, Session]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._sub = None
        self._dec = codec.decoder(Input)

    def register(self, svc) -> None:
        own = f"{subjects.queue(subjects.RUNTIME_AGENT)}.{self.agent_id}"
        svc.endpoint(subjects.agent(self.agent_id, subjects.AGENT_ATTACH), AttachRequest, self.attach, queue=own)
        svc.endpoint(subjects.agent(self.agent_id, subjects.AGENT_EXEC), ExecRequest, self.exec, queue=own,
                     max_bytes=_MAX_EXEC_REQUEST)
        svc.endpoint(subjects.agent(self.agent_id, subjects.AGENT_EXEC_PRIVILEGED), ExecRequest,
                     self.exec_privileged, queue=own, max_bytes=_MAX_EXEC_REQUEST)

    async def start(self) -> None:
        # Not a service endpoint: those run each request in a task of its own, and input
        # must be handled in the order it was sent.
        self._sub = await self.nc.subscribe(subjects.agent(self.agent_id, subjects.AGENT_STDIN), cb=self._on_input)
        self._spawn(self._reap())

    async def close(self) -> None:
        """Stop listening; the processes keep their stdio until the agent's process ends."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    # ---- containers (the manager's hook) -----------------------------------------

    def prepare(self, c: Container, attach: AttachSpec | None) -> "Prepared":
        return Prepared(self, c, attach)

    def reclaim(self, c: Container) -> asyncio.Future | None:
        """After an agent restart: the stdio of a running container, back from its shim."""
        try:
            held = self.runtime.held_stdio(c.id)
        except (OSError, NotFound) as e:
            log.warning("stdio of %s not taken back: %s", c.id[:12], e)
            return None
        if not held:
            return None
        # A terminal's master is its input too; a pipe stdin was ours alone and is gone.
        io = ProcessIO(tty=c.config.stdio.tty, stdin=c.config.stdio.tty and c.config.stdio.open_stdin,
                       log_path=c.log_path)
        if c.config.stdio.tty:
            for extra in held[1:]:
                os.close(extra)
            io.connect_master(held[0])
        elif len(held) == 2:
            io.adopt_outputs(*held)
        else:
            for fd in held:
                os.close(fd)
            return None
        log.info("stdio of %s taken back from its shim", c.id[:12])
        return self.pump(c.id, io)

    def pump(self, cid: str, io: ProcessIO) -> asyncio.Future:
        """`io` is the container's stdio until it exits; resolves once its sessions have the end."""
        old = self.ios.get(cid)
        if old is not None and old is not io:
            self._forget(old)
        if not io.closed:
            self.ios[cid] = io
        drained = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                try:
                    code: int | None = await self.runtime.wait(cid)
                except NotFound:
                    code = None  # removed under us (rm -f)
                await io.finish(code)
            except Exception:
                log.exception("stdio of %s failed", cid[:12])
            finally:
                if self.ios.get(cid) is io:
                    del self.ios[cid]
                self._forget(io)
                if not drained.done():
                    drained.set_result(None)

        self._spawn(run())
        return drained

    # ---- verbs ---------------------------------------------------------------------

    async def attach(self, req: AttachRequest) -> AttachReply:
        c = self.containers.inspect(req.container)
        if c.state.status != "running":
            raise Conflict("You cannot attach to a stopped container, start it first")
        io = self.ios.get(c.id)
        if io is None or io.closed:
            if c.config.stdio.interactive:
                raise Conflict(f"container {c.id[:12]} lost its stdio when the agent stopped: start it again")
            return self._follow(c, req.attach)
        self._add_session(io, req.attach)
        io.resize(req.attach.rows, req.attach.cols)
        return AttachReply(id=c.id, tty=io.tty, stdin=io.stdin_open)

    def _follow(self, c: Container, spec: AttachSpec) -> AttachReply:
        """Output only, from the log: the container's stdio is its shim's."""
        exited = self.containers.exited_event(c.id)
        if exited is None:
            raise Conflict("You cannot attach to a stopped container, start it first")
        io = ProcessIO(tty=False, stdin=False)
        self._add_session(io, msgspec.structs.replace(spec, stdin=False))

        async def run() -> None:
            try:
                await follow_log(io, c.log_path, exited, self.runtime, c.id)
            finally:
                self._forget(io)

        self._spawn(run())
        return AttachReply(id=c.id, tty=False, stdin=False)

    async def start_following(self, c: Container, spec: AttachSpec, start) -> Container:
        """`start -a` of a container without -i/-t: the session gets its output from its log,
        read from where the log ends before `start()` starts it, so none of it is missed."""
        reader = log_reader_at_end(c.log_path)
        io = ProcessIO(tty=False, stdin=False)
        self._add_session(io, msgspec.structs.replace(spec, stdin=False))
        try:
            started = await start()
        except BaseException:
            reader.close()
            self._forget(io)
            raise
        exited = self.containers.exited_event(started.id)
        if exited is None:  # it ended already
            exited = asyncio.Event()
            exited.set()

        async def run() -> None:
            try:
                await follow_log(io, started.log_path, exited, self.runtime, started.id, reader=reader)
            finally:
                self._forget(io)

        self._spawn(run())
        return started

    async def exec_privileged(self, req: ExecRequest) -> ExecReply:
        """`exec --privileged`: its subject is the admin role's alone (shared/permissions.py)."""
        return await self.exec(req, privileged=True)

    async def exec(self, req: ExecRequest, *, privileged: bool = False) -> ExecReply:
        if req.privileged and not privileged:
            # NATS does not say who published: the subject is what the server let through.
            raise PermissionDenied("exec --privileged gives the process the host: only an admin may run it",
                                   detail_code=NEEDS_PRIVILEGE)
        c = self.containers.inspect(req.container)
        if c.state.status != "running":
            raise Conflict(f"container {c.id[:12]} is not running")
        exec_id = secrets.token_hex(16)
        process = execs.process_file(self.containers.store.bundle(c.id), req, exec_id)
        if req.detach:
            await execs.run_detached(self.runtime, c.id, process)
            return ExecReply(id=c.id, exec_id=exec_id)
        if req.attach is None:
            process.unlink()
            raise InvalidArgument("an attached exec needs a session (attach)")
        io = ProcessIO(tty=req.tty, stdin=req.stdin)
        self._add_session(io, req.attach)
        try:
            proc = await execs.spawn(self.runtime, c.id, process, io, req.attach.rows, req.attach.cols)
        except BaseException:
            self._forget(io)
            process.unlink(missing_ok=True)
            raise

        async def wait() -> None:
            try:
                code = await proc.wait()
            finally:
                process.unlink(missing_ok=True)
            await io.finish(code)
            self._forget(io)

        self._spawn(wait())
        return ExecReply(id=c.id, exec_id=exec_id)

    # ---- input ---------------------------------------------------------------------

    async def _on_input(self, msg) -> None:
        try:
            inp = self._dec.decode(msg.data)
        except msgspec.DecodeError as e:
            await self._reply(msg, InvalidArgument(f"invalid Input on {msg.subject}: {e}"))
            return
        got = self.sessions.get(inp.session)
        if got is None:
            await self._reply(msg, NotFound("no such session: it ended, or it was dropped after a silence"))
            return
        io, s = got
        s.touch()
        if inp.kind == "ack":
            s.ack(inp.acked)
            await self._reply(msg)
        elif inp.kind in ("data", "eof"):
            if not s.stdin:
                await self._reply(msg, Conflict("this session was attached without stdin"))
            elif len(inp.data) > STDIN_CHUNK:
                await self._reply(msg, InvalidArgument(f"stdin data over {STDIN_CHUNK} bytes in one message"))
            elif inp.kind == "data":
                io.feed(inp.data, self._replier(msg))
            else:
                io.feed_eof(self._replier(msg))
        elif inp.kind == "resize":
            with contextlib.suppress(OSError):
                io.resize(inp.rows, inp.cols)
            await self._reply(msg)
        else:  # close: the client detached
            self._drop(inp.session)
            await self._reply(msg)

    def _replier(self, msg):
        if not msg.reply:
            return None
        return lambda err: self._reply(msg, err)

    async def _reply(self, msg, err: DockyardError | None = None) -> None:
        if not msg.reply:
            return
        try:
            if err is None:
                await self.nc.publish(msg.reply, b"{}")
            else:
                await self.nc.publish(msg.reply, codec.encode(ErrorReply(code=err.code, message=err.message)),
                                      headers={ERROR_CODE_HEADER: err.code, ERROR_HEADER: err.message[:1000],
                                               DETAIL_HEADER: err.detail_code or ""})
        except Exception as e:  # noqa: BLE001 - a lost reply is the client's timeout
            log.debug("reply on %s: %s", msg.subject, e)

    # ---- sessions ------------------------------------------------------------------

    def _add_session(self, io: ProcessIO, spec: AttachSpec) -> Session:
        if len(spec.session) < 16 or spec.session in self.sessions:
            raise InvalidArgument("a session needs a new random id of 16 or more characters")
        if not spec.inbox:
            raise InvalidArgument("a session needs an inbox for its output")
        s = Session(self.nc, spec)
        io.attach(s)
        self.sessions[s.id] = (io, s)
        return s

    def _drop(self, sid: str) -> None:
        got = self.sessions.pop(sid, None)
        if got is not None:
            got[0].detach(sid)

    def _forget(self, io: ProcessIO) -> None:
        io.close()
        for sid in [sid for sid, (i, _) in self.sessions.items() if i is io]:
            del self.sessions[sid]

    async def _reap(self) -> None:
        """Drop sessions whose client went silent (killed): their process carries on."""
        while True:
            await asyncio.sleep(_REAP_EVERY)
            now = time.monotonic()
            for sid, (io, s) in list(self.sessions.items()):
                if s.expired(now) or (s.closed and s.done.done()):
                    log.info("session %s dropped (%s)", sid[:8], "silent" if s.expired(now) else "ended")
                    self._drop(sid)

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t


class Prepared:
    """The stdio of one start of an interactive container, made before the runtime starts it.

    The shim keeps our ends open (the pty master it received, or the output pipes), so
    that they outlive the agent: a restarted agent takes copies of them (`reclaim`)."""

    def __init__(self, owner: Interactive, c: Container, attach: AttachSpec | None):
        self.owner = owner
        self.attach = attach
        tty = c.config.stdio.tty
        self.io = ProcessIO(tty=tty, stdin=c.config.stdio.open_stdin, log_path=c.log_path)
        # A directory of its own under /tmp: a socket path has 108 bytes at most.
        self.console_dir = tempfile.mkdtemp(prefix="dycon-") if tty else ""
        # The shim holds the only pty master until we take a copy: it waits for this pipe's EOF.
        self.ack_r, self.ack_w = os.pipe() if tty else (-1, -1)
        try:
            if tty:
                self.spec = StdioSpec(console_socket=os.path.join(self.console_dir, "s"), ack=self.ack_r)
            else:
                fds = self.io.make_pipes()
                self.spec = StdioSpec(fds=fds, hold=self.io.output_fds())
            if attach is not None:
                owner._add_session(self.io, attach)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """The start failed: nothing of this stdio stays."""
        self.owner._forget(self.io)
        self._close_ack()
        if self.console_dir:
            shutil.rmtree(self.console_dir, ignore_errors=True)

    def _close_ack(self) -> None:
        for fd in (self.ack_r, self.ack_w):
            if fd >= 0:
                os.close(fd)
        self.ack_r = self.ack_w = -1

    def begin(self, cid: str) -> asyncio.Future:
        """The container runs: pump its stdio; the future resolves once sessions have its end."""
        try:
            if self.console_dir:
                try:
                    held = self.owner.runtime.held_stdio(cid)
                finally:
                    self._close_ack()
                    shutil.rmtree(self.console_dir, ignore_errors=True)
                if not held:
                    raise Unavailable("the container's shim holds no terminal")
                self.io.connect_master(held[0])
                if self.attach is not None:
                    self.io.resize(self.attach.rows, self.attach.cols)
            else:
                self.io.started()
        except Exception:
            log.exception("stdio of %s", cid[:12])
            self.io.outputs_done()  # no output: the sessions still get the exit
        return self.owner.pump(cid, self.io)
