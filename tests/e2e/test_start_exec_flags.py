"""`start -a/-i`, `exec --privileged`, `exec --env-file` (issue 11) against real agents and crun.

Two agents; the containers run on the one placement would not pick (`--host`), so every
verb crosses the bus to another agent's host. Terminals are real pseudo-terminals.
"""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys

import pytest

from shared import bus_lite, subjects
from shared.errors import PermissionDenied
from shared.messages.agent import NEEDS_PRIVILEGE
from shared.messages.interactive import ExecReply, ExecRequest
from tests.e2e.test_agent_fleet import REPO_ROOT, running_fleet
from tests.e2e.test_interactive import PROMPT, Term

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

GiB = 1 << 30
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21


@pytest.fixture(scope="module")
def fleet(nats_url, tmp_path_factory):
    with running_fleet(tmp_path_factory.mktemp("startexec"), nats_url, {1: 2 * GiB, 2: 4 * GiB}) as f:
        yield f


@pytest.fixture
def other(fleet) -> str:
    """The agent placement would not pick (the one with less memory)."""
    return fleet.agents[0].id


def cli(fleet, *args: str, input: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=fleet.env, cwd=REPO_ROOT,
                          input=input, capture_output=True, timeout=timeout)


# ---- start -a / -i --------------------------------------------------------------------

def test_start_a_shows_this_start_s_output_apart_and_ends_with_its_code(fleet, other):
    fleet.cli("create", "--name", "sa-plain", "--host", other, "--network", "none", "busybox",
              "sh", "-c", "echo out; echo err >&2; exit 4")
    try:
        for _ in range(2):  # the second start shows its own output only, not the first one's again
            p = cli(fleet, "start", "-a", "sa-plain")
            assert (p.returncode, p.stdout) == (4, b"out\n"), p.stderr
            assert p.stderr.splitlines()[-1:] == [b"err"]
        assert fleet.inspect("sa-plain")["Host"] == other
        p = cli(fleet, "start", "-a", "sa-plain", "sa-plain")
        assert p.returncode != 0 and b"cannot start and attach multiple containers" in p.stderr
    finally:
        fleet.cli("rm", "-f", "sa-plain", check=False)


def test_start_ai_sends_stdin_and_start_a_of_a_running_container_attaches(fleet, other):
    fleet.cli("create", "-i", "--name", "sa-stdin", "--host", other, "--network", "none", "busybox",
              "sh", "-c", "cat; echo done; exit 3")
    try:
        data = os.urandom(300 * 1024).hex().encode()  # several input chunks, byte for byte
        p = cli(fleet, "start", "-ai", "sa-stdin", input=data)
        assert p.returncode == 3, p.stderr[-2000:]
        assert p.stdout == data + b"done\n"
    finally:
        fleet.cli("rm", "-f", "sa-stdin", check=False)
    fleet.cli("run", "-d", "--name", "sa-running", "--host", other, "--network", "none", "busybox",
              "sh", "-c", "while [ ! -e /tmp/stop ]; do echo tick; sleep 0.1; done; exit 6")
    try:
        started = fleet.inspect("sa-running")["State"]["StartedAt"]
        proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "start", "-a", "sa-running"],
                                env=fleet.env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready and proc.stdout.readline() == b"tick\n"  # attached: its output reaches us
            fleet.cli("exec", "sa-running", "touch", "/tmp/stop")
            assert proc.wait(30) == 6, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert fleet.inspect("sa-running")["State"]["StartedAt"] == started  # attached to, not started again
    finally:
        fleet.cli("rm", "-f", "sa-running", check=False)


def test_start_ai_on_a_terminal_is_the_shell_and_its_exit_code(fleet, other):
    fleet.cli("create", "-it", "--name", "sa-tty", "--host", other, "--network", "none", "busybox", "sh")
    try:
        with Term(["start", "-ai", "sa-tty"], fleet.env, rows=33, cols=99) as t:
            t.expect(PROMPT)
            t.send(b"stty size; echo h''i; exit 3\r")
            t.expect(b"33 99")
            t.expect(b"hi")
            assert t.wait() == 3
        assert fleet.inspect("sa-tty")["State"]["ExitCode"] == 3
    finally:
        fleet.cli("rm", "-f", "sa-tty", check=False)


# ---- exec --privileged, --env-file ------------------------------------------------------

def _cap_eff(fleet, *args: str) -> int:
    p = cli(fleet, "exec", *args, "ex-target", "grep", "CapEff", "/proc/self/status")
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split()[1], 16)


def test_exec_privileged_has_every_capability_and_only_on_its_own_verb(fleet, other, nats_url):
    fleet.cli("run", "-d", "--name", "ex-target", "--host", other, "--network", "none", "busybox", "sleep", "300")
    try:
        plain, privileged = _cap_eff(fleet), _cap_eff(fleet, "--privileged")
        for cap in (CAP_NET_ADMIN, CAP_SYS_ADMIN):
            assert not plain >> cap & 1 and privileged >> cap & 1, (hex(plain), hex(privileged))
        assert plain & privileged == plain
        assert _cap_eff(fleet) == plain  # nothing of it stays with the container

        async def on_the_plain_verb():
            """Whoever may publish `exec` cannot ask it for --privileged: the agent refuses."""
            c = await bus_lite.connect(nats_url)
            try:
                with pytest.raises(PermissionDenied) as e:
                    await c.request(subjects.agent(other, subjects.AGENT_EXEC),
                                    ExecRequest(container="ex-target", args=["true"], detach=True, privileged=True),
                                    ExecReply)
                assert e.value.detail_code == NEEDS_PRIVILEGE
            finally:
                await c.close()
        asyncio.run(on_the_plain_verb())
    finally:
        fleet.cli("rm", "-f", "ex-target", check=False)


def test_exec_env_file_comes_before_e(fleet, other, tmp_path):
    envf = tmp_path / "exec.env"
    envf.write_text("# settings\nA=from file\nB=file\nFROM_CLIENT\n")
    fleet.cli("run", "-d", "--name", "ex-env", "--host", other, "--network", "none", "busybox", "sleep", "300")
    try:
        p = subprocess.run([sys.executable, "-m", "services.cli.main", "exec", "--env-file", str(envf), "-e", "B=flag",
                            "ex-env", "sh", "-c", 'echo "$A|$B|$FROM_CLIENT"'],
                           env={**fleet.env, "FROM_CLIENT": "mine"}, cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=60)
        assert (p.returncode, p.stdout) == (0, "from file|flag|mine\n"), p.stderr
        envf.write_text("BAD NAME=1\n")
        p = cli(fleet, "exec", "--env-file", str(envf), "ex-env", "true")
        assert p.returncode == 125 and b"contains whitespaces" in p.stderr
    finally:
        fleet.cli("rm", "-f", "ex-env", check=False)
