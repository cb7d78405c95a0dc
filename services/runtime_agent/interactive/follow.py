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


def log_reader_at_end(log_path: str) -> LogReader:
    """A reader past what the log holds now: what came before is `logs`'s to show."""
    reader = LogReader(Path(log_path))
    reader.read()
    return reader


async def follow_log(io: ProcessIO, log_path: str, exited: asyncio.Event, runtime, cid: str,
                     reader: LogReader | None = None) -> None:
    """The log's new lines to `io`'s sessions until the container exits; `reader`: one placed
    before the container started (`start -a`), so that nothing it writes is missed."""
    reader = reader or log_reader_at_end(log_path)
    try:
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
