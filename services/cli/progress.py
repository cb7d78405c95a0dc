"""Progress of long CLI work on stderr: push, pull, build, save, load, gc.

One `Reporter` per command, in one of four modes (`mode_for`):

    tty    bars drawn with rich: one per layer (bytes, speed) or per step (spinner, time)
    plain  one line per change: `<layer>: Pushing`, `#3 [2/4] COPY a /a`, `#3 DONE 0.2s`,
           like docker's and BuildKit's plain output (`--progress=plain`, or no terminal)
    json   one JSON object per event (`--json`, `--progress=json`); stdout keeps the result
    quiet  nothing (`-q`, `--progress=quiet`)

A command feeds it two kinds of work: transfers (`transfer(item, status, current, total)`,
a layer of a push, pull, save or load) and steps (`step(no, total, label, cached)`, then
`output` lines and `finish_step`: a build's instructions, a GC run's jobs). stdout is left
to the command's own result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from shared.progress import ACTIVE, DONE, EXISTS, MOUNTED, WAITING

MODES = ("auto", "tty", "plain", "json", "quiet")
# JSON lines of a transfer's bytes, at most this often per item (its status changes always go)
JSON_INTERVAL = 0.2

# how each verb says a transfer's status (docker's words)
_WORDS = {WAITING: "Waiting", EXISTS: "Already exists", MOUNTED: "Mounted"}
_VERB_WORDS = {"Pull": ("Pulling", "Pull complete"), "Save": ("Saving", "Saved"), "Load": ("Loading", "Loaded")}


def add_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", choices=MODES, default="auto",
                   help="tty: bars, plain: lines, json: JSON lines, quiet: none (default auto: tty on a terminal)")


def mode_for(progress: str = "auto", *, quiet: bool = False, json_output: bool = False,
             stream: TextIO | None = None) -> str:
    stream = stream or sys.stderr
    if quiet or progress == "quiet":
        return "quiet"
    if progress in ("tty", "plain", "json"):
        return progress
    if json_output:
        return "json"
    return "tty" if stream.isatty() else "plain"


def reporter_for(args: argparse.Namespace, ctx: Any, *, verb: str = "Push") -> "Reporter":
    """The Reporter a command's flags ask for (`--progress`, `-q`, the global `--json`): what
    `save` and `load` call, with verb "Save" or "Load", before their transfers."""
    return Reporter(mode_for(getattr(args, "progress", "auto"), quiet=getattr(args, "quiet", False),
                             json_output=getattr(ctx, "json_output", False)), verb=verb)


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    return f"{n}B"


class Reporter:
    """Shows one command's progress in its mode; `close` (or the `with` block) ends it."""

    def __init__(self, mode: str, *, verb: str = "Push", stream: TextIO | None = None,
                 clock: Any = time.monotonic):
        self.mode = mode
        self.verb = verb  # Push, Pull, Save, Load: "Pushing", "Pushed"/"Pull complete"
        self.stream = stream or sys.stderr
        self.clock = clock
        self._status: dict[str, str] = {}
        self._sent: dict[str, float] = {}  # item -> when its last JSON line went
        self._step: tuple[int, float, bool] | None = None  # (no, started, cached)
        self._live: Any = None
        self._tasks: dict[Any, Any] = {}

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- transfers ---------------------------------------------------------------------

    def _word(self, status: str, current: int = 0, total: int = 0) -> str:
        active, done = _VERB_WORDS.get(self.verb, (f"{self.verb}ing", f"{self.verb}ed"))
        if status == ACTIVE:
            return active
        if status == DONE:
            return done
        return _WORDS.get(status, status)

    def transfer(self, item: str, status: str, current: int = 0, total: int = 0) -> None:
        """A layer (or other blob) `item` is `status` (WAITING, ACTIVE, DONE, EXISTS, MOUNTED)."""
        changed = self._status.get(item) != status
        self._status[item] = status
        if self.mode == "json":
            now = self.clock()
            if changed or now - self._sent.get(item, 0.0) >= JSON_INTERVAL:
                self._sent[item] = now
                self._json(event="transfer", id=item, status=status, current=current, total=total)
        elif self.mode == "plain" and changed:
            size = f" {human_size(total or current)}" if status == DONE and (total or current) else ""
            self._line(f"{item}: {self._word(status)}{size}")
        elif self.mode == "tty":
            self._bar(item, status, current, total)

    def _bar(self, item: str, status: str, current: int, total: int) -> None:
        live = self._progress(transfers=True)
        task = self._tasks.get(item)
        desc = f"{item}: {self._word(status)}"
        finished = status in (DONE, EXISTS, MOUNTED)
        if task is None:
            task = self._tasks[item] = live.add_task(desc, total=total or None, status="")
        if finished:
            total = total or current or 1
            current = total
        live.update(task, description=desc, completed=current, total=total or None)

    # ---- steps ----------------------------------------------------------------------

    def step(self, no: int, total: int, label: str, cached: bool = False) -> None:
        """Step `no` of `total` starts (the one before it ends); `cached`: done already."""
        self.finish_step()
        self._step = (no, self.clock(), cached)
        name = f"[{no}/{total}] {label}" if total else label
        if self.mode == "json":
            self._json(event="step", step=no, total=total, name=label, cached=cached)
        elif self.mode == "plain":
            self._line(f"#{no} {name}")
        elif self.mode == "tty":
            live = self._progress(transfers=False)
            self._tasks[("step", no)] = live.add_task(f"#{no} {name}", total=1, status="")

    def output(self, no: int, line: str) -> None:
        """A line a step printed (a RUN's stdout or stderr)."""
        if self.mode == "json":
            self._json(event="output", step=no, line=line)
        elif self.mode == "plain":
            self._line(f"#{no} {line}")
        elif self.mode == "tty":
            self._progress(transfers=False).console.print(f"#{no} {line}", markup=False, highlight=False)

    def finish_step(self, detail: str = "") -> None:
        """End the current step: `#N CACHED`, or `#N DONE 1.2s` (with `detail`, if any)."""
        if self._step is None:
            return
        no, started, cached = self._step
        self._step = None
        seconds = self.clock() - started
        state = "CACHED" if cached else f"DONE {seconds:.1f}s"
        state += f" {detail}" if detail else ""
        if self.mode == "json":
            self._json(event="step_done", step=no, cached=cached, seconds=round(seconds, 3), detail=detail)
        elif self.mode == "plain":
            self._line(f"#{no} {state}")
        elif self.mode == "tty":
            task = self._tasks.get(("step", no))
            if task is not None:
                self._live.update(task, completed=1, status=state)

    # ---- messages --------------------------------------------------------------------

    def log(self, message: str) -> None:
        """A line of its own; it ends the current step (a build's "pushing" follows its last)."""
        self.finish_step()
        if self.mode == "json":
            self._json(event="log", message=message)
        elif self.mode == "plain" or (self.mode == "tty" and self._live is None):
            self._line(message)  # before any bar: the display is not started, nor its columns chosen
        elif self.mode == "tty":
            self._live.console.print(message, markup=False, highlight=False)

    def warning(self, message: str) -> None:
        self.finish_step()
        if self.mode == "json":
            self._json(event="warning", message=message)
        elif self.mode != "quiet":
            self.log(f"WARNING: {message}")

    def data(self, event: str, **fields: Any) -> None:
        """A machine-readable event (a GC job's report): in json mode only, where numbers beat words."""
        if self.mode == "json":
            self._json(event=event, **fields)

    def close(self) -> None:
        self.finish_step()
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ---- output ----------------------------------------------------------------------

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _json(self, **event: Any) -> None:
        self._line(json.dumps(event, separators=(",", ":")))

    def _progress(self, *, transfers: bool) -> Any:
        """The rich display, started on first use (rich loads only for a terminal)."""
        if self._live is None:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TransferSpeedColumn)
            console = Console(file=self.stream, force_terminal=True, highlight=False)
            if transfers:
                columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()]
            else:
                columns = [SpinnerColumn(finished_text="✔"), TextColumn("{task.description}"),
                           TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
            self._live = Progress(*columns, console=console, refresh_per_second=10)
            self._live.start()
        return self._live
