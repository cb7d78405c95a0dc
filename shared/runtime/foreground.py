"""Run a container to completion in the foreground (the builder's RUN steps).

No shim: the caller owns the whole life of the container, so `<runtime> run`
is its child and the container's output comes through pipes that end when the
container (and its whole pid namespace) has gone. Cancelling the task kills
the container; the container and its cgroup are always deleted at the end.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import msgspec

from shared.runtime import cgroups, jsonlog, records
from shared.runtime.probe import RuntimeInfo
from shared.runtime.spec import ContainerSpec, build_config

# on_output(stream, line): stream is "stdout" or "stderr", line keeps its newline.
OutputCallback = Callable[[str, bytes], "Awaitable[None] | None"]

_LINE_LIMIT = 1024 * 1024


async def run_to_completion(info: RuntimeInfo, runtime_root: str | os.PathLike, cid: str,
                            bundle_dir: str | os.PathLike, spec: ContainerSpec, *,
                            log_path: str | os.PathLike | None = None,
                            on_output: OutputCallback | None = None) -> int:
    """Run `spec` in `bundle_dir` until it exits; its exit code (128+n if killed by signal n)."""
    records.check_id(cid)
    bundle = Path(bundle_dir)
    records.write_atomic(bundle / "config.json", msgspec.json.encode(build_config(spec)))
    log = open(log_path, "ab") if log_path is not None else None
    proc = await asyncio.create_subprocess_exec(
        *info.command(runtime_root, "run", "--bundle", str(bundle), cid),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        limit=_LINE_LIMIT)
    try:
        await asyncio.gather(_pump(proc.stdout, "stdout", log, on_output),
                             _pump(proc.stderr, "stderr", log, on_output))
        code = await proc.wait()
    except BaseException:
        await _kill(info, runtime_root, cid, proc)
        raise
    finally:
        if log is not None:
            log.close()
        await _delete(info, runtime_root, cid)
        cgroups.remove_cgroup(spec.cgroups_path)
    return 128 - code if code < 0 else code


async def _pump(stream: asyncio.StreamReader, name: str, log, on_output: OutputCallback | None) -> None:
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:  # EOF: the last, unterminated line
            line = e.partial
        except asyncio.LimitOverrunError as e:  # a huge line: pass it on in pieces
            line = await stream.read(max(e.consumed, 1))
        if not line:
            return
        if log is not None:
            log.write(jsonlog.encode(name, line))
            log.flush()
        if on_output is not None:
            result = on_output(name, line)
            if inspect.isawaitable(result):
                await result


async def _kill(info: RuntimeInfo, root, cid: str, proc: asyncio.subprocess.Process) -> None:
    kill = await asyncio.create_subprocess_exec(
        *info.command(root, "kill", cid, "KILL"), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await kill.wait()
    if proc.returncode is None:
        try:
            proc.send_signal(signal.SIGKILL)  # the runtime itself, if the container never started
        except ProcessLookupError:
            pass
        await proc.wait()


async def _delete(info: RuntimeInfo, root, cid: str) -> None:
    if not records.runtime_has(root, cid):
        return  # `run` deleted it on exit already: spare an exec
    proc = await asyncio.create_subprocess_exec(
        *info.command(root, "delete", "--force", cid), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await proc.wait()
