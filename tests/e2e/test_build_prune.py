"""`dockyard.builder.prune` against a real stack, and what a failed RUN leaves behind (nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from examples.busybox import busybox_rootfs, tar_dir

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def base(stack, tmp_path_factory):
    d = tmp_path_factory.mktemp("bb")
    (d / "bb.tar").write_bytes(tar_dir(busybox_rootfs(d / "root")))
    stack.cli("import", str(d / "bb.tar"), "busybox:latest")
    return "busybox:latest"


def _ctx(tmp: Path, name: str, dockerfile: str) -> Path:
    ctx = tmp / name
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    (ctx / "data.bin").write_bytes(os.urandom(64 * 1024))
    return ctx


def _build(stack, ctx: Path, tag: str, *extra: str) -> dict:
    return json.loads(stack.cli("build", "--json", "-t", tag, *extra, str(ctx)).stdout)


def _layers(reply: dict) -> set[str]:
    return {s["layer"] for s in reply["steps"] if s["layer"]}


async def _prune(stack, **kw):
    from shared import bus
    from shared.messages.gc import PruneReply, PruneRequest
    from shared.subjects import BUILDER_PRUNE
    nc = await bus.connect(stack.nats_url)
    try:
        return await bus.BusClient(nc).request(BUILDER_PRUNE, PruneRequest(**kw), PruneReply, timeout=60)
    finally:
        await nc.drain()


async def _cached_layers(stack) -> set[str]:
    from shared import bus
    from services.builder.executor.cache import BuildCache
    nc = await bus.connect(stack.nats_url)
    try:
        return {str(e.rec.digest) for e in await (await BuildCache.open(nc)).entries() if e.rec.digest}
    finally:
        await nc.drain()


def _local_blob(stack, digest: str) -> Path:
    return stack.data_dir / "builder" / "blobs" / "sha256" / digest.removeprefix("sha256:")


async def test_prune_by_age_dry_run_then_real(stack, base, tmp_path):
    mark = uuid.uuid4().hex
    old = _build(stack, _ctx(tmp_path, "old", f"FROM busybox:latest\nCOPY data.bin /\nRUN echo {mark} > /old\n"),
                 "dybd-prune-old:1")
    time.sleep(0.2)
    cut = time.time()
    new = _build(stack, _ctx(tmp_path, "new", f"FROM busybox:latest\nCOPY data.bin /\nRUN echo {mark} > /new\n"),
                 "dybd-prune-new:1")
    old_layers, new_layers = _layers(old), _layers(new)
    assert len(old_layers) == 2 and all(_local_blob(stack, d).exists() for d in old_layers)

    age = time.time() - cut + 0.1  # older than the second build started: only the first one's records
    dry = await _prune(stack, max_age_seconds=age, dry_run=True)
    listed = {i.split()[1] for i in dry.items}
    assert old_layers <= listed and not (new_layers & listed)
    assert await _cached_layers(stack) >= old_layers | new_layers  # a dry run removes nothing
    assert all(_local_blob(stack, d).exists() for d in old_layers)

    real = await _prune(stack, max_age_seconds=age)
    assert real.items == dry.items and real.removed == dry.removed and real.freed == dry.freed
    assert real.freed >= sum(s["size"] for s in old["steps"] if s["layer"])
    left = await _cached_layers(stack)
    assert not (old_layers & left) and new_layers <= left
    assert not any(_local_blob(stack, d).exists() for d in old_layers)
    assert all(_local_blob(stack, d).exists() for d in new_layers)

    again = _build(stack, tmp_path / "old", "dybd-prune-old:1")
    assert not any(s["cached"] for s in again["steps"])  # its records are gone: every step runs
    copy = [s["layer"] for s in old["steps"] if s["instruction"].startswith("COPY")]
    assert set(copy) <= _layers(again)  # ... and COPY makes the same layer again (reproducible tar)
    assert _local_blob(stack, copy[0]).exists()


async def test_prune_keeps_records_of_a_running_build(stack, base, tmp_path):
    df = "FROM busybox:latest\nCOPY data.bin /\nARG N\nRUN sleep 2 && echo $N > /n\n"
    ctx = _ctx(tmp_path, "busy", df)
    first = _build(stack, ctx, "dybd-prune-busy:1", "--build-arg", "N=1")
    copy_layer = next(s["layer"] for s in first["steps"] if s["instruction"].startswith("COPY"))

    # The second build hits the COPY record, then sleeps in its RUN while the cache is emptied.
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "build", "--json", "-t",
                             "dybd-prune-busy:2", "--build-arg", "N=2", str(ctx)],
                            env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not list((stack.data_dir / "builder" / "work").glob("step-*/merged")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        res = await _prune(stack, max_bytes=0)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    second = json.loads(out)
    assert [s["cached"] for s in second["steps"]] == [True, False]
    assert not any(copy_layer in i for i in res.items)
    assert copy_layer in await _cached_layers(stack)  # leased: kept
    assert _local_blob(stack, copy_layer).exists()


def _cgroups_named(prefix: str) -> list[str]:
    out = []
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        if ctrl.is_dir() and not ctrl.is_symlink():
            out += [str(p) for p in ctrl.glob(prefix + "*")]
    return out


def _runtime_leftovers() -> set[str]:
    """Cgroups and OCI runtime state of build steps, of every builder on this machine."""
    state = [Path("/run/dybd") / d for d in os.listdir("/run/dybd")] if os.path.isdir("/run/dybd") else []
    return set(_cgroups_named("dybd-")) | {str(p) for s in state for sub in ("crun", "runc", "containers")
                                           if (s / sub).is_dir() for p in (s / sub).iterdir()}


def test_failed_run_leaves_nothing_behind(stack, base, tmp_path):
    ctx = _ctx(tmp_path, "fail", "FROM busybox:latest\nCOPY data.bin /\nRUN echo doomed > /x && exit 1\n")
    root = stack.data_dir / "builder"
    before = _runtime_leftovers()
    p = stack.cli("build", "-t", "dybd-fail:1", str(ctx), check=False)
    assert p.returncode != 0 and "exit code: 1" in p.stderr
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(root) not in mounts
    assert not list((root / "work").iterdir())
    # builders of other stacks on this machine may be running a step right now: theirs go away
    # when the step ends, what this build left behind stays
    deadline = time.monotonic() + 60
    while (left := _runtime_leftovers() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left
