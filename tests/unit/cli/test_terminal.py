"""The CLI's terminal helpers: docker's --detach-keys, the detach sequence across reads, raw mode."""

from __future__ import annotations

import os
import termios

import pytest

from services.cli.terminal import DetachMatcher, RawMode, parse_detach_keys
from shared.errors import InvalidArgument


def test_detach_keys_parse_as_docker_writes_them():
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,x") == b"\x01x"
    assert parse_detach_keys("ctrl-@,ctrl-[") == b"\x00\x1b"
    for bad in ("", "ctrl-", "ctrl-pp", "meta-x", "ctrl-1"):
        with pytest.raises(InvalidArgument):
            parse_detach_keys(bad)


def test_the_sequence_is_found_across_reads_and_a_false_start_is_sent_on():
    m = DetachMatcher(b"\x10\x11")
    assert m.feed(b"ab\x10") == (b"ab", False)  # held: it may be the start
    assert m.feed(b"c") == (b"\x10c", False)  # it was not
    assert m.feed(b"\x10\x10") == (b"\x10", False)
    assert m.feed(b"\x11rest") == (b"", True)
    assert m.feed(b"\x11") == (b"\x11", False)


def test_raw_mode_is_restored_on_an_exception():
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError):
            with RawMode(slave):
                assert not termios.tcgetattr(slave)[3] & termios.ICANON
                raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
