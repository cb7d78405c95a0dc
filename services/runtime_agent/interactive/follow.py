"""`attach` to a container started without -i/-t: its new output, read from its log.

The shim holds such a container's stdio and writes the log, so an attached session gets
what is appended from the moment it attached (docker's attach replays nothing either),
stdout and stderr apart, within the session's credit, until the container exits.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from services.runtime_agent.containers.logs import LogReader
from services.runtime_agent.interactive.pump import ProcessIO
from shared.errors import NotFound
from shared.messages.interactive import STDERR, STDOUT

_POLL_FIRST = 0.002
_POLL = 0.05
_EXIT_CODE_WAIT = 10.0


async def follow_log(io: ProcessIO, log_path: str, exited: asyncio.Event, runtime, cid: str) -> None:
    reader = LogReader(Path(log_path))
    try:
        reader.read()  # what came before the attach is `logs`'s to show
        poll = _POLL_FIRST
        while io.sessions:
            done = exited.is_set()
            lines = reader.read()
            for ln in lines:
                io.feed_output(STDERR if ln.stream == "stderr" else STDOUT, ln.line.encode())
            await io.room()
            if done:
                break
            if lines:
                poll = _POLL_FIRST
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), poll)
            poll = min(poll * 2, _POLL)
    finally:
        reader.close()
    io.outputs_done()
    code = None
    if exited.is_set():
        with contextlib.suppress(NotFound, TimeoutError):
            code = await runtime.wait(cid, _EXIT_CODE_WAIT)  # a --rm container may be gone already
    await io.finish(code)
