"""Detached containers that outlive their caller: start, inspect, signal, wait, delete.

Each container gets a shim (shim.py) as its parent, so the caller may be
SIGKILLed and restarted: a new `Runtime` over the same `state_root` finds the
container through its state directory (records.py), waits for it on a pidfd
of its shim, and signals it on a pidfd of its init, both verified against the
recorded process start time so that a reused pid is never mistaken for ours.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal as _signal
import subprocess
from pathlib import Path
from typing import Literal

import msgspec

from shared.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, Unavailable
from shared.runtime import cgroups, foreground, records, shimctl
from shared.runtime.foreground import OutputCallback
from shared.runtime.jsonlog import rfc3339nano
from shared.runtime.probe import RuntimeInfo, probe_runtime
from shared.runtime.records import ExitRecord, Meta, ShimRecord
from shared.runtime.spec import ContainerSpec, build_config
from shared.runtime.stdio import StdioSpec, take_held

DEFAULT_STATE_ROOT = Path("/run/dockyard/runtime")
_START_TIMEOUT = 60.0
UNKNOWN_EXIT = 255  # docker's exit code when the real one was lost

Status = Literal["created", "running", "stopped", "unknown"]


class ContainerState(msgspec.Struct, frozen=True):
    id: str
    status: Status
    pid: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None


class Runtime:
    """The OCI runtime of this host, and the containers started under `state_root`."""

    def __init__(self, info: RuntimeInfo, state_root: str | os.PathLike = DEFAULT_STATE_ROOT):
        self.info = info
        self.state_root = Path(state_root)
        self.runtime_root = self.state_root / info.name  # the runtime's own --root
        self.containers_dir = self.state_root / "containers"
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_root.mkdir(parents=True, exist_ok=True)
        self._spare: shimctl.Spare | None = None
        self._unreaped: list[subprocess.Popen] = []
        self._exits: dict[str, asyncio.Future] = {}  # set once a shim we started says "exit"
        self._exit_pipes: dict[str, shimctl.LineReader] = {}

    @classmethod
    async def probe(cls, state_root: str | os.PathLike = DEFAULT_STATE_ROOT) -> Runtime:
        return cls(await asyncio.to_thread(probe_runtime), state_root)

    def warm(self) -> None:
        """Boot a spare shim now, so that even the first start skips the shim's boot.

        After each start a new spare is booted anyway; only a caller that will start
        detached containers (not one that only runs to completion) should warm up.
        """
        self._new_spare()

    def close(self) -> None:
        """Let the spare shim go and stop listening for exits (containers keep running)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()
        for cid in list(self._exits):
            self._forget_exit(cid)
        for p in self._unreaped:
            p.wait()  # first halves of shims: they exit as soon as they have forked
        self._unreaped = []

    def command(self, *args: str) -> list[str]:
        return self.info.command(self.runtime_root, *args)

    # -- start ------------------------------------------------------------

    async def create_and_start(self, cid: str, bundle_dir: str | os.PathLike,
                               spec: ContainerSpec, log_path: str | os.PathLike,
                               stdio: StdioSpec | None = None) -> int:
        """Write the bundle's config.json and start the container under a shim; its pid.

        `stdio`: the caller keeps the container's stdio (interactive: shared/runtime/stdio.py)."""
        sdir = self._dir(records.check_id(cid))
        try:
            sdir.mkdir()
        except FileExistsError as e:
            raise AlreadyExists(f"container {cid} already exists") from e
        bundle = Path(bundle_dir)
        try:
            records.write_atomic(bundle / "config.json", msgspec.json.encode(build_config(spec)))
            meta = Meta(bundle=str(bundle), log_path=str(log_path), cgroups_path=spec.cgroups_path,
                        runtime_argv=tuple(self.command()), runtime_root=str(self.runtime_root))
            records.write_atomic(sdir / "meta.json", msgspec.json.encode(meta))
            pid = await self._spawn_shim(cid, sdir, bundle, Path(log_path), spec.cgroups_path, stdio)
        except BaseException:
            # Failed, cancelled or timed out: undo whatever part of the start happened.
            # (A shim still inside `run -d` at this instant can win the race; the
            # window is the runtime's own start time.)
            subprocess.run(self.command("delete", "--force", cid), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
            shutil.rmtree(sdir, ignore_errors=True)
            cgroups.remove_cgroup(spec.cgroups_path)
            raise
        return pid

    async def _spawn_shim(self, cid: str, sdir: Path, bundle: Path, log_path: Path,
                          cgroups_path: str, stdio: StdioSpec | None = None) -> int:
        memcg = cgroups.controller_dir("memory", cgroups_path)
        args = [*(stdio.shim_options() if stdio else ()), cid, str(bundle), str(log_path), str(sdir),
                str(memcg) if memcg else "-", *self.command()]
        pass_fds = stdio.pass_fds if stdio else ()
        # A spare cannot be handed fds (its arguments come down a pipe): pipes need a cold shim.
        sync_r = self._use_spare(args) if not pass_fds else None
        spare = sync_r is not None
        if sync_r is None:
            sync_r = self._cold_shim(sdir, args, pass_fds)
        asyncio.get_running_loop().call_soon(self._new_spare)  # for the next start
        pid = await self._started(cid, sync_r)
        if pid is None and spare and not shimctl.log_tail(sdir) and not (sdir / "shim.json").exists():
            # The spare died between its boot and our hand-off (it never got to the
            # container: no log, no record): once more, with a shim of its own.
            pid = await self._started(cid, self._cold_shim(sdir, args))
        if pid is None:
            raise Unavailable(f"container shim for {cid} died before reporting: {shimctl.log_tail(sdir)}")
        return pid

    async def _started(self, cid: str, sync_r: int) -> int | None:
        """The container's pid once its shim reports `ok`; None if the shim died first."""
        pipe = shimctl.LineReader(sync_r)
        try:
            line = await asyncio.wait_for(pipe.line(), _START_TIMEOUT)
        except BaseException:
            pipe.close()
            raise
        verb, _, rest = line.partition(" ")
        if verb == "ok":
            self._listen_for_exit(cid, pipe)  # the pipe stays open for `exit <code>`
            return int(rest.split()[0])
        pipe.close()
        if verb == "error":
            raise InvalidArgument(f"container {cid} did not start: {rest}")
        return None

    def _cold_shim(self, sdir: Path, args: list[str], pass_fds: tuple[int, ...] = ()) -> int:
        """Start a shim for `args` now; the read end of its sync pipe."""
        proc, sync_r = shimctl.start_cold(sdir, args, pass_fds)
        self._unreap(proc)
        return sync_r

    def _new_spare(self) -> None:
        if self._spare is None:
            self._spare = shimctl.Spare.boot()

    def _use_spare(self, args: list[str]) -> int | None:
        """Hand `args` to the spare shim; the read end of its sync pipe, None if there is none."""
        spare, self._spare = self._spare, None
        if spare is None or not spare.hand(args):
            return None  # none, or it died (killed?): start one the slow way
        self._unreap(spare.proc)
        return spare.sync_r

    def _unreap(self, proc: subprocess.Popen) -> None:
        # A shim's first half exits once Python has booted and forked: a spare made a
        # moment ago may not have yet, and the loop must not block on it. Reaped later.
        self._unreaped = [p for p in (*self._unreaped, proc) if p.poll() is None]

    def _listen_for_exit(self, cid: str, pipe: shimctl.LineReader) -> None:
        """Resolve `_exits[cid]` when the shim reports the exit (or its pipe closes)."""
        fut = asyncio.get_running_loop().create_future()
        self._exits[cid] = fut
        self._exit_pipes[cid] = pipe
        pipe.on_line(lambda line: fut.done() or fut.set_result(line))

    def _forget_exit(self, cid: str) -> None:
        fut = self._exits.pop(cid, None)
        if fut is not None and not fut.done() and not fut.get_loop().is_closed():
            fut.cancel()
        pipe = self._exit_pipes.pop(cid, None)
        if pipe is not None:
            pipe.close()

    # -- inspect ----------------------------------------------------------

    async def state(self, cid: str) -> ContainerState:
        sdir = self._existing_dir(cid)
        ex = records.read(sdir / "exit.json", ExitRecord)
        if ex is not None:
            return _stopped(cid, ex)
        shim = records.read(sdir / "shim.json", ShimRecord)
        if shim is not None and _alive(shim.shim_pid, shim.shim_start):
            return ContainerState(cid, "running", pid=shim.pid, started_at=shim.started_at)
        # The shim is gone (killed?) or not there yet: the runtime is the witness.
        ex = records.read(sdir / "exit.json", ExitRecord)  # it may have just finished
        if ex is not None:
            return _stopped(cid, ex)
        rt = await self._runtime_state(cid, sdir)
        status = rt.get("status")
        started = shim.started_at if shim else None
        if status in ("running", "paused"):
            return ContainerState(cid, "running", pid=rt.get("pid"), started_at=started)
        if status == "created" or (status is None and shim is None):
            return ContainerState(cid, "created" if status else "unknown", started_at=started)
        return ContainerState(cid, "stopped", exit_code=UNKNOWN_EXIT, started_at=started)

    async def list(self) -> list[ContainerState]:
        out = []
        for d in sorted(self.containers_dir.iterdir()):
            try:
                out.append(await self.state(d.name))
            except NotFound:
                pass  # deleted while we looked
        return out

    def held_stdio(self, cid: str) -> list[int]:
        """Copies of an interactive container's stdio ends that its shim holds (stdio.py)."""
        shim = records.read(self._existing_dir(cid) / "shim.json", ShimRecord)
        if shim is None or not shim.held:
            return []
        return take_held(shim.shim_pid, shim.shim_start, shim.held)

    # -- signal, wait, stop -----------------------------------------------

    async def kill(self, cid: str, sig: int = _signal.SIGKILL) -> None:
        """Signal the container's init (a pidfd: no runtime exec, no pid reuse race)."""
        sdir = self._existing_dir(cid)
        shim = records.read(sdir / "shim.json", ShimRecord)
        fd = None
        if shim is not None and not (sdir / "exit.json").exists():
            fd = records.open_pidfd(shim.pid, shim.pid_start)
        if fd is None:
            if shim is None and (await self._runtime_state(cid, sdir)).get("status") == "running":
                await self._run_runtime(sdir, "kill", cid, str(int(sig)))
                return
            raise Conflict(f"container {cid} is not running")
        try:
            _signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError as e:
            raise Conflict(f"container {cid} is not running") from e
        finally:
            os.close(fd)

    async def wait(self, cid: str, timeout: float | None = None) -> int:
        """The container's exit code, once it has exited; TimeoutError after `timeout` s."""
        sdir = self._existing_dir(cid)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        fut = self._exits.get(cid)
        if fut is not None:
            # Our own shim tells us when exit.json is written, before it deletes the
            # container from the runtime and exits: that is the earliest moment.
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.CancelledError:
                if not fut.cancelled():
                    raise
        while True:
            ex = records.read(sdir / "exit.json", ExitRecord)
            if ex is not None:
                return ex.exit_code
            shim = records.read(sdir / "shim.json", ShimRecord)
            fd = records.open_pidfd(shim.shim_pid, shim.shim_start) if shim else None
            if fd is None:
                if shim is None:
                    if not sdir.exists():
                        # Removed under us (rm -f, a lost data dir): nothing will ever exit.
                        raise NotFound(f"container {cid} is gone")
                    # Not started yet (a concurrent create_and_start): only time helps.
                    if deadline is not None and loop.time() >= deadline:
                        raise TimeoutError(f"container {cid} did not exit in {timeout} s")
                    await asyncio.sleep(0.05)
                    continue
                if (sdir / "exit.json").exists():
                    continue
                return await self._wait_orphan(cid, sdir, shim, deadline)
            try:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                await records.wait_pidfd(fd, remaining)
            finally:
                os.close(fd)

    async def _wait_orphan(self, cid: str, sdir: Path, shim: ShimRecord,
                           deadline: float | None) -> int:
        """The shim died before the container: wait on the container itself."""
        loop = asyncio.get_running_loop()
        fd = records.open_pidfd(shim.pid, shim.pid_start)
        if fd is not None:
            try:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                await records.wait_pidfd(fd, remaining)
            finally:
                os.close(fd)
        ex = ExitRecord(pid=shim.pid, exit_code=UNKNOWN_EXIT, oom_killed=False,
                        started_at=shim.started_at, finished_at=rfc3339nano())
        records.write_atomic(sdir / "exit.json", msgspec.json.encode(ex))
        return UNKNOWN_EXIT

    async def stop(self, cid: str, timeout: float = 10.0, stop_signal: int = _signal.SIGTERM) -> int:
        """TERM (or `stop_signal`), then KILL after `timeout` s (a PID 1 without a handler ignores it)."""
        for sig, grace in ((stop_signal, timeout), (_signal.SIGKILL, None)):
            try:
                await self.kill(cid, sig)
            except Conflict:
                break  # already exited
            try:
                return await self.wait(cid, grace)
            except TimeoutError:
                continue
        return await self.wait(cid)

    # -- delete -----------------------------------------------------------

    async def delete(self, cid: str) -> None:
        """Remove the container, killing it if it runs; leaves no runtime state or cgroup."""
        sdir = self._existing_dir(cid)
        meta = records.read(sdir / "meta.json", Meta)
        if (await self.state(cid)).status == "running":
            try:
                await self.kill(cid, _signal.SIGKILL)
            except Conflict:
                pass
            await self.wait(cid, 30.0)
        self._forget_exit(cid)
        await shimctl.wait_shim_gone(sdir)
        root = meta.runtime_root if meta else self.runtime_root
        if records.runtime_has(root, cid):  # the shim deletes it on exit: spare an exec
            await self._run_runtime(sdir, "delete", "--force", cid, check=False)
        if meta is not None:
            stuck = cgroups.remove_cgroup(meta.cgroups_path)
            if stuck:
                raise Conflict(f"container {cid}: cgroups still busy: {', '.join(map(str, stuck))}")
        shutil.rmtree(sdir, ignore_errors=True)

    # -- foreground -------------------------------------------------------

    async def run_to_completion(self, cid: str, bundle_dir: str | os.PathLike, spec: ContainerSpec,
                                *, log_path: str | os.PathLike | None = None,
                                on_output: OutputCallback | None = None) -> int:
        """Run to the end with output to `log_path` and/or `on_output`; the exit code."""
        return await foreground.run_to_completion(self.info, self.runtime_root, cid, bundle_dir,
                                                  spec, log_path=log_path, on_output=on_output)

    # -- helpers ----------------------------------------------------------

    def _dir(self, cid: str) -> Path:
        return self.containers_dir / cid

    def _existing_dir(self, cid: str) -> Path:
        sdir = self._dir(records.check_id(cid))
        if not sdir.is_dir():
            raise NotFound(f"no such container: {cid}")
        return sdir

    def _argv_for(self, sdir: Path) -> list[str]:
        """The runtime command the container was started with (a later probe may differ)."""
        meta = records.read(sdir / "meta.json", Meta)
        return list(meta.runtime_argv) if meta else self.command()

    async def _run_runtime(self, sdir: Path, *args: str, check: bool = True) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            *self._argv_for(sdir), *args, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        if check and proc.returncode != 0:
            raise Unavailable(f"{self.info.name} {args[0]} failed: {err.decode(errors='replace').strip()}")
        return out

    async def _runtime_state(self, cid: str, sdir: Path) -> dict:
        """`<runtime> state`, or {} if the runtime does not know the container."""
        proc = await asyncio.create_subprocess_exec(
            *self._argv_for(sdir), "state", cid, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            return {}
        try:
            return msgspec.json.decode(out)
        except msgspec.DecodeError:
            return {}


def _stopped(cid: str, ex: ExitRecord) -> ContainerState:
    return ContainerState(cid, "stopped", pid=ex.pid, exit_code=ex.exit_code,
                          oom_killed=ex.oom_killed, started_at=ex.started_at,
                          finished_at=ex.finished_at)


def _alive(pid: int, start: int) -> bool:
    fd = records.open_pidfd(pid, start)
    if fd is None:
        return False
    os.close(fd)
    return True
