"""Container lifecycle on one host: run, start, stop, kill, rm, restart policies, restore.

Every container has a record (store.py) that is the truth `ps`/`inspect` show; the
runtime's shim keeps the process alive without us. While a container runs, a monitor
task waits for its exit, then records it, tears its network down, applies `--rm` or
the restart policy (restart.py). After an agent restart, `restore()` re-attaches monitors
to the containers still running and settles those that exited while the agent was away.
A run's record and runtime spec are made by create.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal as _signal
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from services.runtime_agent.containers import etcfiles, health, rootfs, runflags
from services.runtime_agent.containers.config import resolve_user
from services.runtime_agent.containers.create import new_container, runtime_spec
from services.runtime_agent.containers.locks import KeyedLocks
from services.runtime_agent.containers.logs import LogReader, Streamer, follow
from services.runtime_agent.containers.release import release, release_exited
from services.runtime_agent.containers.restart import backoff, should_restart
from services.runtime_agent.containers.signals import parse_signal
from services.runtime_agent.containers.store import ContainerStore
from services.runtime_agent.images import ImageStore, Puller
from services.runtime_agent.network import Network, parse_publish_all
from services.runtime_agent.volumes import mounts as vmounts
from services.runtime_agent.volumes.attach import Attach
from services.runtime_agent.volumes.store import VolumeStore
from shared.errors import Conflict, DockyardError, InvalidArgument, NotFound
from shared.messages.agent import Container, ContainerState, ImageRecord, NetworkInfo, Port, RunRequest, Volume
from shared.runtime import Runtime
from shared.runtime.jsonlog import rfc3339nano

log = logging.getLogger("dockyard.agent.containers")

_READER_GRACE = 10.0  # seconds an attached reader may take to drain the log after the exit


@dataclass
class Watch:
    """One run of a container: set when it exits, resolved once its exit is recorded."""

    exited: asyncio.Event = field(default_factory=asyncio.Event)
    final: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    readers: set[asyncio.Future] = field(default_factory=set)
    task: asyncio.Task | None = None


class Containers:
    def __init__(self, *, agent_id: str, store: ContainerStore, runtime: Runtime, images: ImageStore,
                 puller: Puller, network: Network, nc, cgroup_parent: str = "/dockyard",
                 volume_roots: tuple[str, ...] = (), volumes: VolumeStore | None = None):
        self.agent_id = agent_id
        self.store = store
        self.runtime = runtime
        self.images = images
        self.puller = puller
        self.snapshots = puller.snapshots
        self.network = network
        self.nc = nc
        self.cgroup_parent = cgroup_parent
        self.volume_roots = volume_roots  # host binds elsewhere need `any_host_path`
        self.volumes = Attach(volumes)  # named volumes (services/runtime_agent/volumes)
        self._watches: dict[str, Watch] = {}
        self._locks = KeyedLocks()
        self._removing: set[str] = set()
        self._pinned: Counter[str] = Counter()  # images a run is about to use
        self._tasks: set[asyncio.Task] = set()
        self.on_change: Callable[[], None] | None = None  # a container started or ended
        # verbs: docker's lifecycle events (action, container, attributes), for `dockyard events`
        self.on_event: Callable[[str, Container, dict[str, str]], None] | None = None
        self.stdio = None  # interactive: makes the stdio of -i/-t containers (services/runtime_agent/interactive)

    # ---- queries ---------------------------------------------------------------------

    def list(self, all: bool = False, match: str = "") -> list[Container]:
        if match:
            try:
                c = self.store.find(match)
            except InvalidArgument:
                return [c for c in self.store.all() if c.id.startswith(match)]
            return [c] if c is not None else []
        return [c for c in self.store.all() if all or c.state.status == "running"]

    def inspect(self, ref: str) -> Container:
        return self.store.resolve(ref)

    def exited_event(self, cid: str) -> asyncio.Event | None:
        """Set when the container's current run ends; None if it is not running."""
        w = self._watches.get(cid)
        return w.exited if w is not None else None

    def images_in_use(self) -> set[str]:
        return {c.config.image_digest for c in self.store.all()} | self.pinned_images()

    def pinned_images(self) -> set[str]:
        """Images a run has resolved but not yet recorded in a container."""
        return set(self._pinned)

    def reserved_memory(self) -> int:
        return sum(c.config.limits.memory or 0 for c in self.store.all() if c.state.status == "running")

    # ---- run -------------------------------------------------------------------------

    async def run(self, req: RunRequest, *, any_host_path: bool = False, privileged: bool = False) -> Container:
        """Create and start; host binds outside `volume_roots` only with `any_host_path`."""
        # Refused before anything is pulled or created.
        runflags.check_privilege(req.flags, allowed=privileged)
        req = vmounts.with_tmpfs_mounts(req)
        volumes = self.volumes.confined(vmounts.parse(req.volumes, req.mounts),
                                        None if any_host_path else self.volume_roots, self.agent_id)
        inherited = vmounts.inherited(req.volumes_from, self.store.resolve)
        streamer = Streamer(self.nc, req.stream_inbox)  # the pull's progress, detached or not
        image = self.puller.local(req.image) if req.pull != "always" else None
        if image is None:
            if req.pull == "never":
                raise NotFound(f"no such image on {self.agent_id}: {req.image}")
            image = await self.puller.pull(req.image, streamer.progress)
        self._pinned[image.digest] += 1
        made, resolved = False, []
        try:
            resolved = self.volumes.resolve(volumes, inherited, self.images.config(image.digest).config.volumes, req)
            c = self._new_container(req, image, resolved)
            self.store.create(c)
            self.event("create", c)
            made = True
        finally:
            self.volumes.release(resolved, made=made)
            self._pinned[image.digest] -= 1
            if self._pinned[image.digest] <= 0:
                del self._pinned[image.digest]
        if req.create_only:
            return c
        w = Watch()
        drained = asyncio.get_running_loop().create_future()
        if not req.detach:
            w.readers.add(drained)  # the exit waits for the output to be sent
        try:
            c = await self._start(c, w, attach=req.attach)
        except BaseException:
            if req.rm:
                with contextlib.suppress(DockyardError):
                    await self._remove_stopped(c.id, volumes=True)
            raise
        if not req.detach:
            self._spawn(self._stream_foreground(c.id, w, drained, Streamer(self.nc, req.stream_inbox)))
        return c

    def _new_container(self, req: RunRequest, image: ImageRecord, volumes: list[Volume]) -> Container:
        return new_container(req, image, volumes, agent_id=self.agent_id, images=self.images,
                             user_networks=self.network.user, log_path=self.store.log_path,
                             cgroup_parent=self.cgroup_parent)

    async def _start(self, c: Container, w: Watch, restart_count: int | None = None,
                     attach=None) -> Container:
        """Mount, network, start; the container is then running under its monitor."""
        cid = c.id
        stdio = None
        try:
            image = self.images.get(c.config.image_digest)
            # The rootfs (a thread) and the network (its own processes) do not wait on each other.
            net = asyncio.ensure_future(self.network.setup(cid, c.config.network,
                                                           parse_publish_all(c.config.publish),
                                                           endpoints=c.config.endpoints, name=c.name))
            try:
                root = await asyncio.to_thread(_mount_rootfs, self.snapshots, cid, image.diff_ids,
                                               [v.source for v in c.config.volumes if v.kind == "bind"])
                await asyncio.to_thread(self.volumes.seed, c, root)
                ids = resolve_user(root, c.config.user)
            finally:
                att = await net  # even on failure: its teardown below must find it settled
            etc = etcfiles.write(self.store.dir(cid) / "etc", hostname=c.config.hostname, mode=att.mode,
                                 ip=att.ip, nameserver=att.nameserver)
            runflags.write_etc(etc, c.config.flags)
            spec = runtime_spec(c, self.cgroup_parent, rootfs_path=str(root), uid=ids.uid, gid=ids.gid,
                                groups=ids.additional_gids, netns=att.netns_path or "host", etc=etc.mounts())
            with contextlib.suppress(NotFound):
                await self.runtime.delete(cid)  # an earlier run's runtime state
            if self.stdio is not None and c.config.stdio.interactive:  # interactive: -i/-t
                stdio = self.stdio.prepare(c, attach)
            pid = await self.runtime.create_and_start(cid, self.store.bundle(cid), spec, self.store.log_path(cid),
                                                      stdio=stdio.spec if stdio is not None else None)
        except BaseException as e:
            if stdio is not None:
                stdio.abort()
            await release(self.network, self.snapshots, cid)  # a failed start holds nothing either
            msg = e.message if isinstance(e, DockyardError) else f"{type(e).__name__}: {e}"
            failed = msgspec.structs.replace(c.state, status="created" if not c.state.started_at else "exited",
                                             error=msg, pid=0)
            self.store.save(msgspec.structs.replace(c, state=failed))
            raise
        net = NetworkInfo(mode=att.mode, ip=str(att.ip or ""), prefixlen=att.prefixlen or 0,
                          gateway=str(att.gateway or ""),
                          ports=[Port(host_ip=str(p.host_ip), host_port=p.host_port,
                                      container_port=p.container_port, protocol=p.protocol) for p in att.ports],
                          endpoints=list(att.endpoints))
        state = ContainerState(status="running", pid=pid, started_at=rfc3339nano(),
                               restart_count=c.state.restart_count if restart_count is None else restart_count)
        c = msgspec.structs.replace(c, state=state, network=net)
        self.store.save(c)
        self._watch(cid, w)
        if stdio is not None:
            w.readers.add(stdio.begin(cid))  # the exit waits for the sessions to have it
        self._changed()
        self.event("start", c)
        return c

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def event(self, action: str, c: Container, **attributes: str) -> None:
        if self.on_event is not None:
            self.on_event(action, c, attributes)

    def run_ended(self, cid: str) -> asyncio.Future | None:
        """verbs (`wait`): resolved with the exit code once the current run is recorded."""
        w = self._watches.get(cid)
        return w.final if w is not None else None

    def _watch(self, cid: str, w: Watch) -> None:
        self._watches[cid] = w
        w.task = self._spawn(self._monitor(cid, w))
        self._spawn(health.watch(self.runtime, self.store, self.store.get(cid), w.exited))  # runflags

    async def _stream_foreground(self, cid: str, w: Watch, drained: asyncio.Future, streamer: Streamer) -> None:
        try:
            await follow(LogReader(self.store.log_path(cid)), streamer, w.exited)
        finally:
            if not drained.done():
                drained.set_result(None)
        try:
            code = await w.final
        except Exception as e:  # noqa: BLE001 - the requester is told, whatever broke
            await streamer.end(error=str(e))
            return
        await streamer.end(exit_code=code)

    # ---- exits -----------------------------------------------------------------------

    async def _monitor(self, cid: str, w: Watch) -> None:
        try:
            try:
                await self.runtime.wait(cid)
            except NotFound:
                pass  # deleted under us (forced rm): settled below
            w.exited.set()
            if w.readers:
                await asyncio.wait(w.readers, timeout=_READER_GRACE)
            c = await self._settle(cid)
            if c is not None and c.config.auto_remove and cid not in self._removing:
                await self._remove_stopped(cid, volumes=True)  # --rm takes its anonymous volumes too
            if not w.final.done():
                w.final.set_result(c.state.exit_code if c is not None else None)
            if c is not None and cid not in self._removing and should_restart(c):
                self._spawn(self._restart_later(c))
        except Exception as e:
            log.exception("monitor of %s failed", cid)
            if not w.final.done():
                w.final.set_exception(e)
        finally:
            if self._watches.get(cid) is w:
                del self._watches[cid]

    async def _settle(self, cid: str) -> Container | None:
        """Record how a container ended and free its network; None if it has no record."""
        try:
            c = self.store.get(cid)
        except NotFound:
            return None
        try:
            st = await self.runtime.state(cid)
            code, oom, finished = st.exit_code, st.oom_killed, st.finished_at or rfc3339nano()
        except NotFound:
            code, oom, finished = 255, False, rfc3339nano()
        # Released before the exit is recorded: a `start` (which waits for "exited") then
        # finds nothing of the last run still mounted or wired.
        await release(self.network, self.snapshots, cid)
        state = msgspec.structs.replace(c.state, status="exited", pid=0, exit_code=code, oom_killed=oom,
                                        finished_at=finished, paused=False)
        c = msgspec.structs.replace(c, state=state, network=NetworkInfo(mode=c.network.mode))
        if self.store.find(cid) is not None:  # not removed while we waited
            self.store.save(c)
        self._changed()
        if oom:
            self.event("oom", c)
        self.event("die", c, exitCode=str(code))
        return c

    async def _restart_later(self, c: Container) -> None:
        await asyncio.sleep(backoff(c))
        async with self._lock(c.id):
            try:
                cur = self.store.get(c.id)
            except NotFound:
                return
            if cur.state.status != "exited" or cur.state.manual_stop or c.id in self._removing:
                return
            try:
                await self._start(cur, Watch(), restart_count=cur.state.restart_count + 1)
            except DockyardError as e:
                log.warning("restart of %s failed: %s", c.id[:12], e.message)

    # ---- user verbs ------------------------------------------------------------------

    async def start(self, ref: str, attach=None) -> Container:
        """`attach` (an AttachSpec): a session on an interactive container's stdio from its start."""
        c = self.store.resolve(ref)
        async with self._lock(c.id):
            c = self.store.get(c.id)
            if c.state.status == "running":
                return c
            c = msgspec.structs.replace(c, state=msgspec.structs.replace(c.state, manual_stop=False, error=""))
            return await self._start(c, Watch(), attach=attach)

    async def stop(self, ref: str, timeout: float | None = 10.0) -> Container:
        """The container's stop signal, then KILL after `timeout` (None: its --stop-timeout, else 10 s)."""
        c = self.store.resolve(ref)
        async with self._lock(c.id):
            c = self.store.get(c.id)
            if c.state.status != "running":
                return c
            self.store.save(msgspec.structs.replace(c, state=msgspec.structs.replace(c.state, manual_stop=True)))
            w = self._watches.get(c.id)
            with contextlib.suppress(NotFound):
                self._thaw(c)
                await self.runtime.stop(c.id, *runflags.stop_with(c.config.flags, timeout))
            if w is not None:
                await asyncio.shield(w.final)
            self.event("stop", c)
        return self.store.find(c.id) or c

    def _thaw(self, c: Container) -> None:
        """verbs: a paused container is thawed to be stopped or killed (a frozen process cannot die)."""
        if c.state.paused:
            from services.runtime_agent.verbs import cgroupctl
            cgroupctl.thaw(self.cgroup_parent, c.id)

    async def kill(self, ref: str, signal: str = "KILL") -> Container:
        c = self.store.resolve(ref)
        if c.state.status != "running":
            raise Conflict(f"container {c.id[:12]} is not running")
        sig = parse_signal(signal)
        await self.runtime.kill(c.id, sig)
        if sig == _signal.SIGKILL:
            self._thaw(c)
        self.event("kill", c, signal=str(sig))
        return c

    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> str:
        c = self.store.resolve(ref)
        async with self._lock(c.id):
            c = self.store.get(c.id)
            if c.state.status == "running":
                if not force:
                    raise Conflict(f"you cannot remove a running container {c.id[:12]}: "
                                   "stop the container before removing or force remove")
                self._removing.add(c.id)
                w = self._watches.get(c.id)
                with contextlib.suppress(NotFound, Conflict):
                    await self.runtime.kill(c.id, _signal.SIGKILL)
                self._thaw(c)
                if w is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(w.final)
            try:
                await self._remove_stopped(c.id, volumes=volumes)
            finally:
                self._removing.discard(c.id)
        return c.id

    async def _remove_stopped(self, cid: str, volumes: bool = False) -> None:
        """Delete everything a container left: runtime state, cgroup, network, rootfs, record
        (and, with `volumes`, its anonymous volumes no other container uses)."""
        gone = self.store.find(cid)
        async def runtime_state() -> None:
            with contextlib.suppress(NotFound):
                await self.runtime.delete(cid)

        async def host_side() -> None:
            await self.network.teardown(cid)
            await self.snapshots.remove_active(cid)

        # The process has exited: its network and rootfs need not wait for the
        # runtime's `delete` (which mostly waits for the shim to finish its own).
        results = await asyncio.gather(runtime_state(), host_side(), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        gone = self.store.find(cid)
        self.store.remove(cid)
        if volumes and gone is not None:
            await asyncio.to_thread(self.volumes.remove_anonymous, gone, self.store.all())
        self._changed()
        if gone is not None:
            self.event("destroy", gone)

    # ---- restore after an agent restart --------------------------------------------

    async def restore(self) -> None:
        running, exited = [], []
        for c in self.store.all():
            if c.state.status not in ("running", "created"):
                continue
            try:
                st = await self.runtime.state(c.id)
            except NotFound:
                st = None
            (running if st is not None and st.status == "running" else exited).append(c)
        await self.network.restore(keep=[c.id for c in running])
        settled = {c.id for c in running} | {c.id for c in exited if c.state.status == "running"}
        with contextlib.suppress(Exception):
            await release_exited(self.snapshots, [c.id for c in self.store.all() if c.id not in settled])
        for c in running:
            w = Watch()
            self._watch(c.id, w)
            if self.stdio is not None and c.config.stdio.interactive:  # interactive: its stdio back
                drained = self.stdio.reclaim(c)
                if drained is not None:
                    w.readers.add(drained)
        for c in exited:
            if c.state.status == "running":
                self._watch(c.id, Watch())  # the monitor finds it ended and settles it

    async def close(self) -> None:
        """Stop watching; the containers keep running (a restarted agent finds them)."""
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    # ---- helpers ---------------------------------------------------------------------

    def _lock(self, cid: str):
        return self._locks(cid)

    def _spawn(self, coro: Awaitable) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def spawn(self, coro: Awaitable) -> asyncio.Task:
        return self._spawn(coro)


def _mount_rootfs(snapshots, cid: str, diff_ids: list[str], bind_sources: list[str]):
    for source in bind_sources:
        os.makedirs(source, exist_ok=True)  # docker creates a missing bind source as a directory
    return rootfs.mount(snapshots, cid, diff_ids)

