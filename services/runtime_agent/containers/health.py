"""Health checks (--health-* or the image's HEALTHCHECK), with docker's rules.

While a container runs, its check runs every `interval` inside it (`<runtime> exec`),
killed after `timeout`. Exit 0 makes it healthy; `retries` failures in a row make it
unhealthy, except that failures within `start_period` of the start do not count. The
state and the last five probes go into the container's record (`ps`, `inspect`). Nothing
acts on an unhealthy container: like docker's, the restart policy only follows exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time

import msgspec

from shared.errors import NotFound
from shared.messages.agent import Container
from shared.messages.runflags import Health, HealthProbe
from shared.runtime.jsonlog import rfc3339nano

log = logging.getLogger("dockyard.agent.health")

DEFAULT_INTERVAL = DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
MAX_OUTPUT = 4096  # bytes of a probe's output kept, as docker
KEPT_PROBES = 5


def argv(h: Health) -> list[str]:
    return ["/bin/sh", "-c", h.test[1]] if h.test[0] == "CMD-SHELL" else list(h.test[1:])


async def probe(runtime, cid: str, h: Health) -> HealthProbe:
    """Run the check once inside the container."""
    start = rfc3339nano()
    proc = await asyncio.create_subprocess_exec(*runtime.command("exec", cid, *argv(h)), stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), h.timeout or DEFAULT_TIMEOUT)
        code = proc.returncode if proc.returncode is not None else -1
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        out, code = b"health check timed out", -1
    return HealthProbe(start=start, end=rfc3339nano(), exit_code=code, output=out[:MAX_OUTPUT].decode(errors="replace"))


def judge(state, p: HealthProbe, h: Health, in_start_period: bool):
    """The container state after probe `p`."""
    if p.exit_code == 0:
        health, streak = "healthy", 0
    elif in_start_period:
        health, streak = state.health or "starting", state.failing_streak
    else:
        streak = state.failing_streak + 1
        health = "unhealthy" if streak >= (h.retries or DEFAULT_RETRIES) else (state.health or "starting")
    log_ = [*state.health_log, p][-KEPT_PROBES:]
    return msgspec.structs.replace(state, health=health, failing_streak=streak, health_log=log_)


async def watch(runtime, store, c: Container, exited: asyncio.Event, on_change=None) -> None:
    """Check `c` until this run of it exits."""
    h = c.config.flags.health
    if h is None:
        return
    started = time.monotonic()
    _update(store, c.id, lambda st: msgspec.structs.replace(st, health="starting", failing_streak=0, health_log=[]))
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exited.wait(), h.interval or DEFAULT_INTERVAL)
        if exited.is_set():
            return
        try:
            p = await probe(runtime, c.id, h)
        except OSError as e:
            log.warning("health check of %s could not run: %s", c.id[:12], e)
            continue
        if exited.is_set():
            return
        in_start = time.monotonic() - started < h.start_period
        before = _update(store, c.id, lambda st: judge(st, p, h, in_start))
        if before is None:
            return
        if on_change is not None:
            on_change()


def _update(store, cid: str, change):
    """Apply `change` to the running container's state; None if it is no longer running.

    Read and write with no await between them: nothing else on the agent's loop can
    save the record in between."""
    try:
        c = store.get(cid)
    except NotFound:
        return None
    if c.state.status != "running":
        return None
    store.save(msgspec.structs.replace(c, state=change(c.state)))
    return c
