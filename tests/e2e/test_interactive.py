"""run -i/-t, attach, exec (issue 11) against real agents and crun, driven from real terminals.

Terminals are pseudo-terminals from Python's `pty`/`os.openpty`: the CLI runs with one as
its controlling terminal, so raw mode, SIGWINCH and the detach keys are the real thing.
Two agents: the containers run on the one placement would not pick (`--host`), and one
test runs on each.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests.e2e.test_agent_fleet import REPO_ROOT, running_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

GiB = 1 << 30
CTRL_P, CTRL_Q = b"\x10", b"\x11"
PROMPT = b"/ # "


@pytest.fixture(scope="module")
def fleet(nats_url, tmp_path_factory):
    with running_fleet(tmp_path_factory.mktemp("interactive"), nats_url, {1: 2 * GiB, 2: 4 * GiB}) as f:
        yield f


@pytest.fixture
def other(fleet) -> str:
    """The agent placement would not pick (the one with less memory)."""
    return fleet.agents[0].id


class Term:
    """The CLI on a pseudo-terminal of its own (its controlling terminal)."""

    def __init__(self, args: list[str], env: dict[str, str], rows: int = 24, cols: int = 80):
        self.master, slave = os.openpty()
        _set_size(slave, rows, cols)
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", *args], env=env, cwd=REPO_ROOT,
                                     stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.out = b""
        self._mark = 0

    def expect(self, pattern: bytes, timeout: float = 30.0) -> bytes:
        """Read until `pattern` appears after what an earlier expect matched; the text up to it."""
        deadline = time.monotonic() + timeout
        while True:
            i = self.out.find(pattern, self._mark)
            if i >= 0:
                seen = self.out[self._mark:i + len(pattern)]
                self._mark = i + len(pattern)
                return seen
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{pattern!r} not seen; the terminal showed {self.out[self._mark:]!r} "
                                     f"(CLI {'exited ' + str(self.proc.poll()) if self.proc.poll() is not None else 'running'})")

    def _read(self, timeout: float) -> bool:
        r, _, _ = select.select([self.master], [], [], min(timeout, 0.5))
        if not r:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:
            return False  # every holder of the other side has gone
        self.out += data
        return bool(data)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def resize(self, rows: int, cols: int) -> None:
        _set_size(self.master, rows, cols)  # the kernel sends the CLI a SIGWINCH

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the CLI did not exit; the terminal showed {self.out[-500:]!r}")
            self._read(0.1)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)

    def __enter__(self) -> "Term":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _state(fleet, ref: str) -> dict:
    return json.loads(fleet.cli("inspect", ref).stdout)[0]["State"]


def _cli_bytes(fleet, *args: str, input: bytes = b"", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=fleet.env, cwd=REPO_ROOT,
                          input=input, capture_output=True, timeout=timeout)


# ---- exec without a tty ----------------------------------------------------------------

def test_exec_streams_stay_apart_and_its_exit_code_is_ours(fleet, other):
    fleet.cli("run", "-d", "--name", "exec-target", "--host", other, "--network", "none", "busybox", "sleep", "300")
    try:
        p = fleet.cli("exec", "exec-target", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
        assert (p.returncode, p.stdout, p.stderr) == (7, "out\n", "err\n")
        p = fleet.cli("exec", "-e", "GREETING=hello", "-w", "/tmp", "-u", "1234:5678", "exec-target",
                      "sh", "-c", 'echo "$GREETING $(pwd) $(id -u):$(id -g)"')
        assert p.stdout == "hello /tmp 1234:5678\n"
        # -d: started, not waited for
        fleet.cli("exec", "-d", "exec-target", "sh", "-c", "sleep 0.2; echo later > /tmp/d")
        deadline = time.monotonic() + 20
        while fleet.cli("exec", "exec-target", "cat", "/tmp/d", check=False).stdout != "later\n":
            assert time.monotonic() < deadline, "exec -d never ran"
            time.sleep(0.2)
        # -i: our stdin reaches it, and its end ends the process's input
        p = _cli_bytes(fleet, "exec", "-i", "exec-target", "sh", "-c", "cat; echo end", input=b"piped\n")
        assert p.stdout == b"piped\nend\n"
        p = fleet.cli("exec", "exec-target", "no-such-command", check=False)
        assert p.returncode != 0
        assert fleet.inspect("exec-target")["Host"] == other
    finally:
        fleet.cli("rm", "-f", "exec-target", check=False)


# ---- run -i ------------------------------------------------------------------------------

def test_run_i_carries_10_mb_byte_exact_and_keeps_stderr_apart(fleet, other):
    data = os.urandom(10 << 20)
    p = _cli_bytes(fleet, "run", "-i", "--rm", "--host", other, "--network", "none", "busybox",
                   "sh", "-c", "cat; echo done-err >&2; exit 5", input=data)
    assert p.returncode == 5, p.stderr[-2000:]
    assert hashlib.sha256(p.stdout).hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(p.stdout) == len(data)
    assert p.stderr == b"done-err\n"


def test_run_i_output_is_in_the_log_too(fleet):
    p = _cli_bytes(fleet, "run", "-i", "--name", "logged-i", "--network", "none", "busybox", "sh", "-c",
                   "read line; echo got $line; echo warn >&2", input=b"this\n")
    try:
        assert (p.stdout, p.stderr) == (b"got this\n", b"warn\n")
        logs = fleet.cli("logs", "logged-i")
        assert (logs.stdout, logs.stderr) == ("got this\n", "warn\n")
    finally:
        fleet.cli("rm", "-f", "logged-i", check=False)


# ---- ttys ----------------------------------------------------------------------------------

def test_run_it_sh_echo_and_exit_code(fleet, other):
    with Term(["run", "-it", "--rm", "--host", other, "--network", "none", "busybox", "sh"], fleet.env) as t:
        t.expect(PROMPT)
        t.send(b"echo hi; exit 3\r")
        t.expect(b"\r\nhi\r\n")
        assert t.wait() == 3
    # the terminal was given back in its old mode: the CLI left no raw mode behind (checked
    # on a second terminal: a fresh CLI prints its error with a normal newline)


def test_run_it_follows_the_window_size(fleet):
    with Term(["run", "-it", "--rm", "--network", "none", "busybox", "sh"], fleet.env, rows=24, cols=80) as t:
        t.expect(PROMPT)
        t.send(b"busybox stty size\r")
        t.expect(b"\r\n24 80\r\n")
        t.resize(40, 132)
        time.sleep(0.5)  # the SIGWINCH's resize travels on its own; no ordering with typed input
        deadline = time.monotonic() + 20
        while True:
            t.send(b"busybox stty size\r")
            seen = t.expect(PROMPT)
            if b"40 132" in seen:
                break
            assert time.monotonic() < deadline, f"stty size never showed 40 132: {seen!r}"
            time.sleep(0.3)
        t.send(b"exit\r")
        assert t.wait() == 0


def test_exec_it_on_a_running_container(fleet, other):
    fleet.cli("run", "-d", "--name", "exec-tty", "--host", other, "--network", "none", "busybox", "sleep", "300")
    try:
        with Term(["exec", "-it", "exec-tty", "sh"], fleet.env, rows=30, cols=100) as t:
            t.expect(PROMPT)
            t.send(b"busybox stty size; echo hi; exit 3\r")
            t.expect(b"30 100\r\nhi\r\n")
            assert t.wait() == 3
        assert _state(fleet, "exec-tty")["Status"] == "running"
    finally:
        fleet.cli("rm", "-f", "exec-tty", check=False)


# ---- detach, attach, a CLI killed -------------------------------------------------------

def test_detach_keys_then_attach_gets_the_prompt_back(fleet, other):
    try:
        with Term(["run", "-it", "--name", "detachable", "--host", other, "--network", "none", "busybox", "sh"],
                  fleet.env) as t:
            t.expect(PROMPT)
            t.send(b"echo first\r")
            t.expect(b"\r\nfirst\r\n")
            t.send(CTRL_P + CTRL_Q)
            assert t.wait() == 0
        assert _state(fleet, "detachable")["Status"] == "running"
        with Term(["attach", "detachable"], fleet.env) as t:
            t.send(b"\r")
            t.expect(PROMPT)
            t.send(b"echo back; exit 4\r")
            t.expect(b"\r\nback\r\n")
            assert t.wait() == 4
        assert _state(fleet, "detachable")["ExitCode"] == 4
    finally:
        fleet.cli("rm", "-f", "detachable", check=False)


def test_a_killed_cli_leaves_the_container_running_and_attach_reconnects(fleet):
    try:
        with Term(["run", "-it", "--name", "survivor", "--network", "none", "busybox", "sh"], fleet.env) as t:
            t.expect(PROMPT)
            t.send(b"echo before\r")
            t.expect(b"\r\nbefore\r\n")
            os.kill(t.proc.pid, signal.SIGKILL)
            t.proc.wait()
        time.sleep(0.5)
        assert _state(fleet, "survivor")["Status"] == "running"
        with Term(["attach", "survivor"], fleet.env) as t:
            t.send(b"echo alive\r")
            t.expect(b"\r\nalive\r\n")
            t.send(CTRL_P + CTRL_Q)
            assert t.wait() == 0
        assert _state(fleet, "survivor")["Status"] == "running"
    finally:
        fleet.cli("rm", "-f", "survivor", check=False)


def test_attach_to_a_container_without_stdin_shows_its_new_output_and_its_exit_code(fleet, other):
    fleet.cli("run", "-d", "--name", "plain", "--host", other, "--network", "none", "busybox", "sh", "-c",
              "echo before; until [ -e /tmp/go ]; do echo tick; sleep 0.2; done; echo out; echo err >&2; exit 6")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "attach", "plain"], env=fleet.env,
                            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        r, _, _ = select.select([proc.stdout], [], [], 60)
        assert r and proc.stdout.readline() == b"tick\n"  # attached: now let it finish
        fleet.cli("exec", "plain", "touch", "/tmp/go")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 6, err
        lines = out.splitlines()  # the first tick was read above: maybe no more came
        assert set(lines[:-1]) <= {b"tick"} and lines[-1:] == [b"out"] and err == b"err\n"
        p = fleet.cli("attach", "plain", check=False)
        assert p.returncode != 0 and "start it first" in p.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fleet.cli("rm", "-f", "plain", check=False)


def test_run_i_proxies_sigterm_to_the_container_and_ends_with_its_code(fleet, other):
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "run", "-i", "--rm", "--host", other,
                             "--network", "none", "busybox", "sh", "-c",
                             'trap "echo got-term; exit 9" TERM; echo ready; while true; do sleep 0.1; done'],
                            env=fleet.env, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        r, _, _ = select.select([proc.stdout], [], [], 60)
        assert r and proc.stdout.readline() == b"ready\n", proc.stderr.read1(4096) if not r else ""
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out) == (9, b"got-term\n"), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_agent_restart_keeps_the_terminal_and_attach_takes_it_back(fleet):
    agent = fleet.agents[0]
    try:
        with Term(["run", "-it", "--name", "outlives", "--host", agent.id, "--network", "none", "busybox", "sh"],
                  fleet.env) as t:
            t.expect(PROMPT)
            t.send(b"echo one\r")
            t.expect(b"\r\none\r\n")
            t.send(CTRL_P + CTRL_Q)
            assert t.wait() == 0
        assert agent.stop() == 0
        agent.start()
        assert _state(fleet, "outlives")["Status"] == "running"
        with Term(["attach", "outlives"], fleet.env) as t:
            t.send(b"\r")
            t.expect(PROMPT)
            t.send(b"echo two; exit 8\r")
            t.expect(b"\r\ntwo\r\n")
            assert t.wait() == 8
        assert "one" in fleet.cli("logs", "outlives").stdout
    finally:
        fleet.cli("rm", "-f", "outlives", check=False)


def test_an_agent_restart_takes_back_the_output_pipes_of_run_di(fleet):
    agent = fleet.agents[0]
    fleet.cli("run", "-di", "--name", "ticker", "--host", agent.id, "--network", "none", "busybox", "sh", "-c",
              "while true; do echo tick; sleep 0.1; done")
    try:
        assert agent.stop() == 0
        agent.start()
        ticks = lambda: fleet.cli("logs", "ticker").stdout.count("tick\n")  # noqa: E731
        seen = ticks()
        deadline = time.monotonic() + 30
        while ticks() < seen + 5:  # still logged: the agent reads the pipes again
            assert time.monotonic() < deadline, "no output logged after the restart"
            time.sleep(0.3)
        assert _state(fleet, "ticker")["Status"] == "running"
    finally:
        fleet.cli("rm", "-f", "ticker", check=False)


def test_run_t_of_a_process_that_ends_at_once_keeps_its_output_and_code(fleet):
    for _ in range(3):  # the pty master is handed over while the container may already be gone
        p = _cli_bytes(fleet, "run", "-t", "--rm", "--network", "none", "busybox", "sh", "-c", "echo tty; exit 2")
        assert (p.returncode, p.stdout) == (2, b"tty\r\n"), p.stderr
    p = fleet.cli("run", "-it", "--rm", "--network", "none", "busybox", "true", check=False)
    assert p.returncode == 1 and "the input device is not a TTY" in p.stderr
