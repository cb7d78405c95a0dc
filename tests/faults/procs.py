"""kill -9 of a stack's processes, and waiting for the stack to be whole again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from shared import bus
from tests.e2e.conftest import Stack

RESTART_TIMEOUT = 45.0


def service_pids(stack: Stack) -> dict[str, int]:
    return json.loads((stack.data_dir / "stack.json").read_text())["pids"]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def kill9(stack: Stack, service: str) -> int:
    """SIGKILL the service's process (the pid `dockyard up` recorded); returns that pid."""
    pid = service_pids(stack)[service]
    assert alive(pid), f"{service} (pid {pid}) was not running before the kill"
    os.kill(pid, signal.SIGKILL)
    return pid


async def wait_restarted(stack: Stack, service: str, old_pid: int) -> int:
    """Until `dockyard up` has started the service again and it answers `$SRV.PING`."""
    deadline = time.monotonic() + RESTART_TIMEOUT
    nc = await bus.connect(stack.nats_url, name="faults-wait")
    try:
        while True:
            assert stack.proc.poll() is None, \
                f"dockyard up exited:\n{(stack.data_dir / 'up.log').read_text(errors='replace')[-3000:]}"
            pid = service_pids(stack).get(service, old_pid)
            if pid != old_pid and alive(pid):
                try:
                    await nc.request(f"$SRV.PING.{service}", b"", timeout=0.5)
                    return pid
                except Exception:
                    pass  # not serving yet
            assert time.monotonic() < deadline, (
                f"{service} not back {RESTART_TIMEOUT:.0f}s after kill -9 of pid {old_pid}:\n"
                f"{(stack.data_dir / 'up.log').read_text(errors='replace')[-3000:]}\n{stack.log(service)[-3000:]}")
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def kill9_and_wait(stack: Stack, service: str) -> int:
    return await wait_restarted(stack, service, kill9(stack, service))


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
    return out


def embedded_nats_pid(stack: Stack) -> int:
    """The nats-server that `dockyard up` started (its child)."""
    for pid in children(stack.proc.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "nats-server":
                return pid
        except FileNotFoundError:
            continue
    raise AssertionError(f"dockyard up (pid {stack.proc.pid}) has no nats-server child")


def wait_port(host: str, port: int, *, open_: bool, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                is_open = True
        except OSError:
            is_open = False
        if is_open == open_:
            return
        assert time.monotonic() < deadline, f"{host}:{port} still {'closed' if open_ else 'open'}"
        time.sleep(0.02)


def restart_nats_like_up(argv: list[str], log_file: Path) -> subprocess.Popen:
    """What a supervising `dockyard up` does for a dead nats-server: the same command line
    (same port, same JetStream store dir, same config), in its own session."""
    with open(log_file, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [m for m in (line.split()[1] for line in f) if m.startswith(str(root) + "/")]


def kill9_nats(stack) -> None:
    """kill -9 of the stack's nats-server, and its restart with the same command line (same
    port, store dir and config): by `dockyard up` where it supervises nats-server (its pid is
    in stack.json), else here, as `up` would."""
    pids = service_pids(stack)
    supervised = pids.get("nats-server") or pids.get("nats")
    pid = supervised or embedded_nats_pid(stack)
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    host, port = stack.nats_url.removeprefix("nats://").rsplit(":", 1)
    os.kill(pid, signal.SIGKILL)
    wait_port(host, int(port), open_=False)
    if not supervised:
        stack.restarted_nats.append(restart_nats_like_up(argv, stack.data_dir / "logs" / "nats.log"))
    wait_port(host, int(port), open_=True)
