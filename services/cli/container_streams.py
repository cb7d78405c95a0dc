"""What a container sends back to the CLI while it runs, and the signals the CLI sends it."""

from __future__ import annotations

import sys


class Stream:
    """Output the agent sends to our inbox; answers its pings; done at `end`."""

    def __init__(self, client, *, timestamps: bool = False, progress: bool = True, json_output: bool = False):
        import asyncio
        self.client = client
        self.inbox = client.nc.new_inbox()
        self.timestamps = timestamps
        self.progress = progress
        self.done = asyncio.get_running_loop().create_future()
        self.sub = None
        self.reporter = None  # made on the first pull progress
        self.json_output = json_output
        self._sizes: dict[str, int] = {}

    async def __aenter__(self) -> "Stream":
        from shared import codec
        from shared.messages.agent import StreamMessage
        dec = codec.decoder(StreamMessage)
        out, err = sys.stdout.buffer, sys.stderr.buffer

        async def on_msg(msg) -> None:
            sm = dec.decode(msg.data)
            if sm.kind == "output":
                if self.reporter is not None:  # the pull is over: bars stop before the output
                    self.reporter.close()
                for ln in sm.lines:
                    f = err if ln.stream == "stderr" else out
                    f.write(((ln.time + " ") if self.timestamps else "").encode() + ln.line.encode())
                out.flush()
                err.flush()
            elif sm.kind == "progress" and self.progress:
                self._pull_progress(sm.message)
            elif sm.kind == "ping" and msg.reply:
                await msg.respond(b"")
            elif sm.kind == "end" and not self.done.done():
                self.done.set_result(sm)

        self.sub = await self.client.nc.subscribe(self.inbox, cb=on_msg)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
        if self.reporter is not None:
            self.reporter.close()

    def _pull_progress(self, message: str) -> None:
        """The agent's pull, one layer at a time (`<layer>: downloading N bytes`, `<layer>:
        unpacked`), as bars on a terminal, else as lines (services.cli.progress)."""
        import re

        from services.cli import progress as pg
        if self.reporter is None:
            self.reporter = pg.Reporter(pg.mode_for("auto", json_output=self.json_output), verb="Pull")
        m = re.fullmatch(r"([0-9a-f]{12}): downloading (\d+) bytes", message)
        if m:
            self.reporter.transfer(m.group(1), pg.ACTIVE, 0, int(m.group(2)))
            self._sizes[m.group(1)] = int(m.group(2))
        elif (m := re.fullmatch(r"([0-9a-f]{12}): unpacked", message)):
            size = self._sizes.get(m.group(1), 0)
            self.reporter.transfer(m.group(1), pg.DONE, size, size)
        else:
            self.reporter.log(message)


class SignalProxy:
    """docker's --sig-proxy: SIGINT/SIGTERM to the CLI become a `kill` of the container.

    The container may start (and print) before its run request is answered, so a signal
    that comes before the id is known waits for it; a second one before then gives up
    waiting (a pull that hangs must not trap the user) and the CLI ends with 130.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, client, host: str, ctx):
        self.client, self.host, self.ctx = client, host, ctx
        self.cid = ""
        self.pending: list[str] = []
        self.starting = None  # the run request's task while it is unanswered
        self.aborted = False
        self.tasks: set = set()

    def __enter__(self) -> "SignalProxy":
        import asyncio
        import signal
        loop = asyncio.get_running_loop()
        for name in self.SIGNALS:
            loop.add_signal_handler(getattr(signal, name), self._on_signal, name)
        return self

    def __exit__(self, *exc) -> None:
        import asyncio
        import signal
        loop = asyncio.get_running_loop()
        for name in self.SIGNALS:
            loop.remove_signal_handler(getattr(signal, name))
        for t in self.tasks:
            t.cancel()  # the container has ended: nothing left to signal

    async def start(self, request):
        """Await the run request; then deliver what came meanwhile."""
        import asyncio
        self.starting = asyncio.ensure_future(request)
        try:
            reply = await self.starting
        except asyncio.CancelledError:
            if self.aborted:
                raise KeyboardInterrupt from None
            raise
        finally:
            self.starting = None
        self.cid = reply.container.id
        for name in self.pending:
            self._forward(name)
        self.pending.clear()
        return reply

    def _on_signal(self, name: str) -> None:
        if self.cid:
            self._forward(name)
            return
        self.pending.append(name)
        if len(self.pending) > 1 and self.starting is not None:
            self.aborted = True
            self.starting.cancel()

    def _forward(self, name: str) -> None:
        import asyncio
        t = asyncio.get_running_loop().create_task(self._kill(name))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _kill(self, name: str) -> None:
        from shared import subjects
        from shared.errors import Conflict, DockyardError, NotFound
        from shared.messages.agent import VERB_KILL, ContainerReply, KillRequest
        try:
            await self.client.request(subjects.agent(self.host, VERB_KILL),
                                      KillRequest(container=self.cid, signal=name), ContainerReply)
        except (Conflict, NotFound):
            pass  # it exited (and maybe was removed) meanwhile: its end message is on its way
        except DockyardError as e:
            self.ctx.error(f"forwarding {name} to {self.cid[:12]}: {e.message}")


