"""Detached containers through a real OCI runtime and the shim."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.errors import AlreadyExists, InvalidArgument, NotFound
from shared.runtime import Runtime, cgroups, jsonlog
from shared.runtime.probe import RuntimeInfo, probe_runtime

pytestmark = pytest.mark.root


def _log(path: Path) -> list[tuple[str, str]]:
    return [(e.stream, e.log) for e in jsonlog.read_entries(path)]


async def test_echo_goes_to_json_log_and_exit_zero(new_id, each_runtime, make_spec, bundle, tmp_path):
    runtime = each_runtime
    cid = new_id()
    log = tmp_path / "c.log"
    spec = make_spec(cid, "sh", "-c", "echo hello; echo oops >&2")
    pid = await runtime.create_and_start(cid, bundle, spec, log)
    assert pid > 1
    assert await runtime.wait(cid, 10) == 0
    state = await runtime.state(cid)
    assert (state.status, state.exit_code, state.oom_killed) == ("stopped", 0, False)
    assert state.started_at and state.finished_at and state.finished_at >= state.started_at
    assert sorted(_log(log)) == [("stderr", "oops\n"), ("stdout", "hello\n")]
    entry = next(jsonlog.read_entries(log))
    assert entry.time.endswith("Z") and "T" in entry.time
    await runtime.delete(cid)
    with pytest.raises(NotFound):
        await runtime.state(cid)


async def test_nonzero_exit_code_is_kept(new_id, runtime, make_spec, bundle, tmp_path):
    cid = new_id()
    await runtime.create_and_start(cid, bundle, make_spec(cid, "sh", "-c", "exit 7"), tmp_path / "l")
    assert await runtime.wait(cid, 10) == 7
    assert (await runtime.state(cid)).exit_code == 7
    await runtime.delete(cid)


async def test_duplicate_id_and_bad_command(new_id, runtime, make_spec, bundle, tmp_path):
    cid = new_id()
    with pytest.raises(InvalidArgument, match="did not start"):
        await runtime.create_and_start(cid, bundle, make_spec(cid, "/no/such/binary"), tmp_path / "l")
    # A failed start leaves nothing behind: the id can be used again.
    assert not (runtime.containers_dir / cid).exists()
    assert not (runtime.runtime_root / cid).exists()
    await runtime.create_and_start(cid, bundle, make_spec(cid, "sleep", "30"), tmp_path / "l")
    with pytest.raises(AlreadyExists):
        await runtime.create_and_start(cid, bundle, make_spec(cid, "true"), tmp_path / "l")
    await runtime.delete(cid)


async def test_limits_reach_the_cgroup(new_id, each_runtime, make_spec, bundle, tmp_path):
    runtime = each_runtime
    cid = new_id()
    spec = make_spec(cid, "sh", "-c",
                     "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                     "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes /sys/fs/cgroup/cpu/cpu.shares;"
                     " sleep 30",
                     memory_bytes=64 << 20, memory_swap_bytes=96 << 20, cpu_shares=512)
    await runtime.create_and_start(cid, bundle, spec, tmp_path / "l")
    mem = cgroups.controller_dir("memory", spec.cgroups_path)
    cpu = cgroups.controller_dir("cpu", spec.cgroups_path)
    assert int((mem / "memory.limit_in_bytes").read_text()) == 64 << 20
    assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == 96 << 20
    assert int((cpu / "cpu.shares").read_text()) == 512
    # The container sees the same values through its own (read-only) cgroup mount.
    for _ in range(100):
        lines = [line for _s, line in _log(tmp_path / "l")]
        if len(lines) == 3:
            break
        await asyncio.sleep(0.02)
    assert [int(x) for x in lines] == [64 << 20, 96 << 20, 512]
    assert (await runtime.state(cid)).status == "running"
    await runtime.delete(cid)
    assert not mem.exists() and not cpu.exists()


async def test_over_memory_limit_is_oom_killed(new_id, runtime, make_spec, bundle, tmp_path):
    cid = new_id()
    # tail keeps the last lines of a stream without newlines: all of it.
    spec = make_spec(cid, "sh", "-c", "head -c 300m /dev/zero | tail -n 1 >/dev/null",
                     memory_bytes=32 << 20, memory_swap_bytes=32 << 20)
    await runtime.create_and_start(cid, bundle, spec, tmp_path / "l")
    assert await runtime.wait(cid, 20) == 137
    state = await runtime.state(cid)
    assert state.oom_killed and state.exit_code == 137
    await runtime.delete(cid)


async def test_stop_kills_a_pid1_that_ignores_term(new_id, runtime, make_spec, bundle, tmp_path):
    cid = new_id()
    await runtime.create_and_start(cid, bundle, make_spec(cid, "sh", "-c", 'trap "" TERM; sleep 100'),
                                   tmp_path / "l")
    t0 = time.monotonic()
    assert await runtime.stop(cid, timeout=0.5) == 137
    assert time.monotonic() - t0 < 5
    assert (await runtime.state(cid)).status == "stopped"
    await runtime.delete(cid)


async def test_stop_with_term_handler_exits_gracefully(new_id, runtime, make_spec, bundle, tmp_path):
    cid = new_id()
    await runtime.create_and_start(cid, bundle, make_spec(cid, "sh", "-c",
                                   'trap "exit 42" TERM; while :; do sleep 0.05; done'), tmp_path / "l")
    await asyncio.sleep(0.1)  # let sh install its trap
    assert await runtime.stop(cid, timeout=10) == 42
    await runtime.delete(cid)


async def test_wait_times_out_and_kill_signals(new_id, runtime, make_spec, bundle, tmp_path):
    cid = new_id()
    await runtime.create_and_start(cid, bundle, make_spec(cid, "sleep", "100"), tmp_path / "l")
    with pytest.raises(TimeoutError):
        await runtime.wait(cid, 0.2)
    await runtime.kill(cid, signal.SIGKILL)
    assert await runtime.wait(cid, 10) == 137
    await runtime.delete(cid)


async def test_wait_without_timeout_ends_when_the_container_dir_goes(new_id, runtime):
    # A container being created has a dir but no shim yet; if the dir is then removed
    # (rm -f racing a start), a wait without timeout must end instead of polling forever.
    cid = new_id()
    sdir = runtime.containers_dir / cid
    sdir.mkdir(parents=True)
    waiter = asyncio.ensure_future(runtime.wait(cid))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    sdir.rmdir()
    with pytest.raises(NotFound, match="gone"):
        await asyncio.wait_for(waiter, 5)


async def test_container_outlives_a_killed_caller(new_id, cleanup, runtime_info, make_spec, bundle, tmp_path):
    """The starting process is SIGKILLed; a new Runtime finds the container and stops it."""
    cid = new_id()
    state_root = tmp_path / "state"
    spec = make_spec(cid, "sh", "-c", "echo up; sleep 100")
    script = (
        "import asyncio, sys, msgspec\n"
        "from shared.runtime import Runtime, ContainerSpec\n"
        "from shared.runtime.probe import RuntimeInfo\n"
        f"info = RuntimeInfo{tuple(runtime_info.__dict__.values())!r}\n"
        f"spec = msgspec.json.decode({__import__('msgspec').json.encode(spec)!r}, type=ContainerSpec)\n"
        f"rt = Runtime(info, {str(state_root)!r})\n"
        f"pid = asyncio.run(rt.create_and_start({cid!r}, {str(bundle)!r}, spec, {str(tmp_path / 'l')!r}))\n"
        "print(pid, flush=True)\n"
        "import time; time.sleep(100)\n"
    )
    caller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[3])
    rt = None
    try:
        pid = int(caller.stdout.readline())
        caller.send_signal(signal.SIGKILL)
        caller.wait()
        rt = Runtime(runtime_info, state_root)
        state = await rt.state(cid)
        assert (state.status, state.pid) == ("running", pid)
        assert [s.id for s in await rt.list()] == [cid]
        os.kill(pid, 0)  # still there
        assert await rt.stop(cid, timeout=0.2) == 137
        assert (await rt.state(cid)).exit_code == 137
        assert ("stdout", "up\n") in _log(tmp_path / "l")
        await rt.delete(cid)
        assert await rt.list() == []
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        if rt is not None:
            cleanup(rt)


async def test_delete_running_container_leaves_nothing(new_id, runtime, make_spec, bundle, tmp_path):
    cid = new_id()
    spec = make_spec(cid, "sleep", "100", memory_bytes=64 << 20)
    pid = await runtime.create_and_start(cid, bundle, spec, tmp_path / "l")
    dirs = [m.path / spec.cgroups_path.lstrip("/") for m in cgroups.cgroup_mounts() if m.version == 1]
    assert any(d.exists() for d in dirs)
    await runtime.delete(cid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not [d for d in dirs if d.exists()]
    assert not (runtime.runtime_root / cid).exists()
    assert not (runtime.containers_dir / cid).exists()
    with pytest.raises(NotFound):
        await runtime.delete(cid)


async def test_seccomp_and_capabilities_apply(new_id, runtime, make_spec, bundle, tmp_path):
    cid = new_id()
    spec = make_spec(cid, "sh", "-c", "unshare -m true; echo rc=$?; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status")
    await runtime.create_and_start(cid, bundle, spec, tmp_path / "l")
    assert await runtime.wait(cid, 10) == 0
    out = "".join(line for stream, line in _log(tmp_path / "l") if stream == "stdout")
    assert "rc=1" in out  # unshare(2) is refused by the seccomp profile
    assert "NoNewPrivs:\t1" in out and "Seccomp:\t2" in out
    assert "CapEff:\t00000000a80425fb" in out  # docker's 14 default capabilities
    await runtime.delete(cid)


async def test_run_to_completion_streams_output(new_id, runtime, make_spec, bundle, tmp_path):
    cid = new_id()
    seen: list[tuple[str, bytes]] = []

    async def on_output(stream: str, line: bytes) -> None:
        seen.append((stream, line))

    spec = make_spec(cid, "sh", "-c", "echo step1; echo warn >&2; printf tail; exit 4")
    code = await runtime.run_to_completion(cid, bundle, spec, log_path=tmp_path / "b.log",
                                           on_output=on_output)
    assert code == 4
    assert sorted(seen) == [("stderr", b"warn\n"), ("stdout", b"step1\n"), ("stdout", b"tail")]
    assert sorted(_log(tmp_path / "b.log")) == [("stderr", "warn\n"), ("stdout", "step1\n"),
                                                 ("stdout", "tail")]
    assert not (runtime.runtime_root / cid).exists()
    assert cgroups.controller_dir("memory", spec.cgroups_path).exists() is False


def test_probe_override_and_errors(runtime_info):
    runc = probe_runtime({"DOCKYARD_RUNTIME": "runc"})
    assert runc.name == "runc" and runc.version and runc.start_ms is not None
    with pytest.raises(InvalidArgument):
        probe_runtime({"DOCKYARD_RUNTIME": "youki"})
    assert isinstance(runtime_info, RuntimeInfo) and runtime_info.name in ("crun", "runc")


async def test_spare_shims_start_containers_and_report_exits(new_id, runtime, make_spec, bundle, tmp_path):
    first, second = new_id(), new_id()
    assert runtime._spare is None
    await runtime.create_and_start(first, bundle, make_spec(first, "sh", "-c", "exit 3"), tmp_path / "1.log")
    await asyncio.sleep(0)  # the refill runs right after a start
    spare = runtime._spare
    assert spare is not None
    bundle2 = tmp_path / "bundle2"
    bundle2.mkdir()
    await runtime.create_and_start(second, bundle2, make_spec(second, "sh", "-c", "echo spare; exit 5"),
                                   tmp_path / "2.log")
    assert runtime._spare is not spare  # used up, and replaced
    assert await runtime.wait(first, 10) == 3
    assert await runtime.wait(second, 10) == 5
    assert _log(tmp_path / "2.log") == [("stdout", "spare\n")]
    for cid in (first, second):
        await runtime.delete(cid)
        assert not (runtime.runtime_root / cid).exists()  # the shim's own `delete` ran first
    await asyncio.sleep(0)
    holders = await _spare_pids(runtime._spare)
    assert len(holders) == 1
    runtime.close()  # a spare that is not needed goes away (EOF on its control pipe)
    assert runtime._spare is None
    deadline = time.monotonic() + 5
    while _alive(holders[0]) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not _alive(holders[0])


async def _spare_pids(spare) -> list[int]:
    """The booted spare: the process holding the write end of its sync pipe."""
    want = f"pipe:[{os.fstat(spare.sync_r).st_ino}]"
    for _ in range(100):
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) in (os.getpid(), spare.proc.pid):  # the half that exits after the fork
                continue
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
                if any(os.readlink(f"/proc/{pid}/fd/{fd}") == want for fd in fds):
                    found.append(int(pid))
            except OSError:
                continue
        if found:
            return found
        await asyncio.sleep(0.02)
    return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_dead_spare_falls_back_to_a_new_shim(new_id, runtime, make_spec, bundle, tmp_path):
    runtime._new_spare()
    pids = await _spare_pids(runtime._spare)
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    # Dead or dying at the hand-off (SIGKILL takes a moment): the start goes on either way.
    cid = new_id()
    await runtime.create_and_start(cid, bundle, make_spec(cid, "true"), tmp_path / "c.log")
    assert await runtime.wait(cid, 10) == 0
    await runtime.delete(cid)
