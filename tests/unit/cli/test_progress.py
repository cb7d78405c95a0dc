"""services.cli.progress: the four modes, on a pipe's file, a StringIO and a real pty."""

from __future__ import annotations

import io
import json
import os
import pty
import re

from services.cli import progress as pg


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_mode_choice():
    with open(os.devnull, "w") as f:  # not a terminal
        assert pg.mode_for("auto", stream=f) == "plain"
        assert pg.mode_for("auto", quiet=True, stream=f) == "quiet"
        assert pg.mode_for("tty", quiet=True, stream=f) == "quiet"
        assert pg.mode_for("auto", json_output=True, stream=f) == "json"
        assert pg.mode_for("plain", json_output=True, stream=f) == "plain"
        assert pg.mode_for("tty", stream=f) == "tty"
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as f:
            assert pg.mode_for("auto", stream=f) == "tty"
            assert pg.mode_for("plain", stream=f) == "plain"
    finally:
        os.close(master)
        os.close(slave)


def test_plain_transfers_print_each_change_once():
    out = io.StringIO()
    with pg.Reporter("plain", verb="Push", stream=out) as r:
        r.transfer("aaa", pg.WAITING)
        for n in (10, 500, 1000):
            r.transfer("aaa", pg.ACTIVE, n, 1_500_000)
        r.transfer("aaa", pg.DONE, 1_500_000, 1_500_000)
        r.transfer("bbb", pg.EXISTS, 7, 7)
    assert out.getvalue().splitlines() == ["aaa: Waiting", "aaa: Pushing", "aaa: Pushed 1.5MB", "bbb: Already exists"]
    out = io.StringIO()
    with pg.Reporter("plain", verb="Pull", stream=out) as r:
        r.transfer("ccc", pg.DONE, 5, 5)
    assert out.getvalue() == "ccc: Pull complete 5B\n"


def test_plain_steps_like_buildkit():
    out, clock = io.StringIO(), Clock()
    with pg.Reporter("plain", stream=out, clock=clock) as r:
        r.step(1, 3, "FROM busybox")
        clock.t += 0.25
        r.step(2, 3, "COPY a /a", cached=True)
        r.step(3, 3, "RUN echo hi")
        r.output(3, "hi")
        clock.t += 1.5
        r.log("pushing app:1")
        r.warning("something")
    assert out.getvalue().splitlines() == [
        "#1 [1/3] FROM busybox", "#1 DONE 0.2s", "#2 [2/3] COPY a /a", "#2 CACHED", "#3 [3/3] RUN echo hi",
        "#3 hi", "#3 DONE 1.5s", "pushing app:1", "WARNING: something"]


def test_json_lines_and_quiet():
    out, clock = io.StringIO(), Clock()
    with pg.Reporter("json", stream=out, clock=clock) as r:
        r.transfer("aaa", pg.ACTIVE, 1, 2)
        r.step(1, 1, "uploads")
        clock.t += 2
        r.finish_step("freed 0B")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events == [{"event": "transfer", "id": "aaa", "status": "active", "current": 1, "total": 2},
                      {"event": "step", "step": 1, "total": 1, "name": "uploads", "cached": False},
                      {"event": "step_done", "step": 1, "cached": False, "seconds": 2.0, "detail": "freed 0B"}]
    out = io.StringIO()
    with pg.Reporter("quiet", stream=out) as r:
        r.transfer("aaa", pg.DONE, 1, 1)
        r.step(1, 1, "x")
        r.log("y")
        r.warning("z")
    assert out.getvalue() == ""


def test_each_verb_says_its_own_words():
    out = io.StringIO()
    for verb in ("Push", "Pull", "Save", "Load"):
        with pg.Reporter("plain", verb=verb, stream=out) as r:
            r.transfer(verb, pg.ACTIVE, 1, 2)
            r.transfer(verb, pg.DONE, 2, 2)
    assert out.getvalue().splitlines() == ["Push: Pushing", "Push: Pushed 2B", "Pull: Pulling", "Pull: Pull complete 2B",
                                           "Save: Saving", "Save: Saved 2B", "Load: Loading", "Load: Loaded 2B"]


def test_json_bytes_of_a_transfer_are_spaced_out_its_status_changes_are_not():
    out, clock = io.StringIO(), Clock()
    with pg.Reporter("json", stream=out, clock=clock) as r:
        for n in range(1, 11):  # ten chunks within 0.1s: the first goes, then one per JSON_INTERVAL
            r.transfer("aaa", pg.ACTIVE, n, 20)
            r.transfer("bbb", pg.ACTIVE, n, 20)
            clock.t += 0.01
        clock.t += pg.JSON_INTERVAL
        r.transfer("aaa", pg.ACTIVE, 15, 20)
        r.transfer("aaa", pg.DONE, 20, 20)  # at once after the last
    events = [(e["id"], e["status"], e["current"]) for e in map(json.loads, out.getvalue().splitlines())]
    assert events == [("aaa", "active", 1), ("bbb", "active", 1), ("aaa", "active", 15), ("aaa", "done", 20)]


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _on_a_pty(verb: str, feed) -> str:
    """What a tty Reporter fed by `feed(reporter)` draws on a real terminal."""
    master, slave = pty.openpty()
    try:
        with os.fdopen(os.dup(slave), "w") as term:
            with pg.Reporter("tty", verb=verb, stream=term) as r:
                feed(r)
        os.close(slave)
        slave = -1
        return _read_all(master).decode(errors="replace")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_tty_draws_bars_on_a_pty():
    def feed(r):
        r.transfer("aaa", pg.ACTIVE, 500_000, 1_000_000)
        r.transfer("aaa", pg.DONE, 1_000_000, 1_000_000)
        r.transfer("bbb", pg.EXISTS, 10, 10)
    text = _on_a_pty("Push", feed)
    assert "\x1b[" in text  # drawn, with cursor movement and colour
    assert "━" in text  # rich's bar
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "aaa: Pushed" in plain and "bbb: Already exists" in plain and "1.0/1.0 MB" in plain


def test_tty_a_line_before_the_first_bar_leaves_the_bars_their_columns():
    def feed(r):
        r.log("Loading 1 image(s)")
        r.transfer("aaa", pg.ACTIVE, 500_000, 1_000_000)
        r.transfer("aaa", pg.DONE, 1_000_000, 1_000_000)
    text = _on_a_pty("Load", feed)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert plain.startswith("Loading 1 image(s)\r\n") and "━" in text and "1.0/1.0 MB" in plain, plain


def test_reporter_for_a_commands_flags():
    import argparse

    class Ctx:
        json_output = False

    p = argparse.ArgumentParser()
    p.add_argument("-q", "--quiet", action="store_true")
    pg.add_flag(p)
    assert pg.reporter_for(p.parse_args(["-q"]), Ctx()).mode == "quiet"
    assert pg.reporter_for(p.parse_args(["--progress", "plain"]), Ctx(), verb="Save").verb == "Save"
    Ctx.json_output = True
    assert pg.reporter_for(p.parse_args([]), Ctx()).mode == "json"
    assert pg.reporter_for(argparse.Namespace(), Ctx()).mode == "json"  # a command without the flags
