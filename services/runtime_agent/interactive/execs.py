"""`exec`: a process in a running container, `<runtime> exec --process FILE` beside its init.

The process is the container's own (capabilities, seccomp, rlimits: its config.json) with
the exec's argv, environment added, working directory, user and terminal; `--privileged`
gives it every capability the agent has (the container's seccomp filter still applies, as
with docker). Attached, the runtime stays our child until the process ends, with our pipes
or the pty it sends to a console socket as the process's stdio; its exit code is the
process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import posixpath
import signal
import struct
import subprocess
import termios
from pathlib import Path

from services.runtime_agent.containers.config import merge_env, resolve_user
from services.runtime_agent.interactive.console import ConsoleSocket
from services.runtime_agent.interactive.pump import ProcessIO
from shared.errors import InvalidArgument, Unavailable
from shared.messages.interactive import ExecRequest
from shared.runtime.spec import KNOWN_CAPABILITIES
from shared.runtime.spec_flags import own_bounding_set

_DETACHED_TIMEOUT = 30.0


def process_file(bundle: Path, req: ExecRequest, exec_id: str) -> Path:
    """The exec's process.json, beside the container's config.json."""
    if not req.args:
        raise InvalidArgument("exec needs a command")
    cfg = json.loads((bundle / "config.json").read_bytes())
    proc = dict(cfg["process"])
    proc["args"] = list(req.args)
    proc["env"] = merge_env(proc.get("env", []), req.env)
    if req.workdir:
        if not posixpath.isabs(req.workdir):
            raise InvalidArgument(f"the working directory {req.workdir!r} is invalid: it needs to be absolute")
        proc["cwd"] = posixpath.normpath(req.workdir)
    if req.user:
        ids = resolve_user(Path(cfg["root"]["path"]), req.user)
        proc["user"] = {"uid": ids.uid, "gid": ids.gid,
                        **({"additionalGids": list(ids.additional_gids)} if ids.additional_gids else {})}
    proc["terminal"] = req.tty
    if req.privileged:  # docker's exec --privileged: every capability, the container's seccomp kept
        caps = sorted(KNOWN_CAPABILITIES & own_bounding_set())
        proc["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    path = bundle / f"exec-{exec_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(proc))
    os.rename(tmp, path)
    return path


async def run_detached(runtime, cid: str, process: Path) -> None:
    """`exec -d`: started, not waited for; its output goes nowhere (docker's too)."""
    proc = await asyncio.create_subprocess_exec(*runtime.command("exec", "--detach", "--process", str(process), cid),
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), _DETACHED_TIMEOUT)
    finally:
        with contextlib.suppress(FileNotFoundError):
            process.unlink()
    if proc.returncode != 0:
        raise Unavailable(f"exec failed: {err.decode(errors='replace').strip()[-1000:]}")


async def spawn(runtime, cid: str, process: Path, io: ProcessIO, rows: int = 0,
                cols: int = 0) -> asyncio.subprocess.Process:
    """Start the attached exec with `io` as its stdio; the runtime's process (wait for its exit)."""
    if io.tty and runtime.info.name == "runc":
        return await _spawn_runc_tty(runtime, cid, process, io, rows, cols)
    console = ConsoleSocket() if io.tty else None
    try:
        if console is not None:
            errs = io.extra_output()  # the runtime's own complaints, as the session's stderr
            argv = runtime.command("exec", "--tty", "--console-socket", console.path, "--process", str(process), cid)
            proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=errs, stderr=errs)
            io.started()
            master = asyncio.ensure_future(console.master())
            ended = asyncio.ensure_future(proc.wait())
            await asyncio.wait({master, ended}, return_when=asyncio.FIRST_COMPLETED)
            if master.done() and not master.exception():
                io.connect_master(master.result())
                io.resize(rows, cols)
            else:
                master.cancel()
                with contextlib.suppress(BaseException):
                    await master
                io.without_terminal()
            ended.cancel()
        else:
            in_r, out_w, err_w = io.make_pipes()
            argv = runtime.command("exec", "--process", str(process), cid)
            proc = await asyncio.create_subprocess_exec(*argv, stdin=in_r, stdout=out_w, stderr=err_w)
            io.started()
    except BaseException:
        io.close()
        raise
    finally:
        if console is not None:
            console.close()
    return proc


async def _spawn_runc_tty(runtime, cid: str, process: Path, io: ProcessIO, rows: int,
                          cols: int) -> asyncio.subprocess.Process:
    """runc sends a console only when it detaches (and then cannot tell the exit code): here it
    stays in the foreground on a pty of ours, copying between it and the process's own pty."""
    master, slave = os.openpty()
    try:
        if rows > 0 and cols > 0:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        argv = runtime.command("exec", "--tty", "--process", str(process), cid)
        proc = await asyncio.create_subprocess_exec(*argv, stdin=slave, stdout=slave, stderr=slave)
    except BaseException:
        os.close(master)
        io.close()
        raise
    finally:
        os.close(slave)
    os.set_inheritable(master, False)
    # runc reads the size of its own terminal on SIGWINCH; it is no controlling terminal of it.
    io.after_resize = lambda: proc.returncode is None and proc.send_signal(signal.SIGWINCH)
    io.started()
    io.connect_master(master)
    return proc
