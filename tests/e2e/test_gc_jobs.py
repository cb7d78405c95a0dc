"""The garbage-collector's agents and build-cache jobs and its schedules, on a whole `dockyard up`.

Everything goes through the CLI against real services: a runtime-agent running containers
with the real OCI runtime from images pushed by skopeo, the builder building with its cache,
the scheduler firing on a seconds-granular cron. The stack is this module's own (its agent
on its own bridge, subnet, name prefix and cgroup parent `dygc*`), so pruning with tiny
limits never touches another test's containers, images or cache.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from examples.busybox import busybox_rootfs, oci_layout, tar_dir
from shared import bus, codec, subjects
from shared.messages.agent import (VERB_IMAGES, VERB_PS, ImagesReply, ImagesRequest, PsReply,
                                  PsRequest)
from shared.messages.gc import GcFinished
from tests.e2e.conftest import skopeo, start_stack, stop_agent_stack
from tests.e2e.test_gc import env
from tests.support.images import skopeo_env

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

AGENT = f"dygc{os.getpid()}"
CGROUP_PARENT = "/dygc-test"
# How much older the old exited container is than the young one. Each gc call's limit is
# taken from the old one's age just before the call, so the young one stays younger than
# the limit as long as a call takes less than this (minus the margin), however loaded
# the machine is.
AGE_GAP = 6.0
LIMIT_MARGIN = 0.5


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("dygc-full")
    with env(DOCKYARD_AGENT_ID=AGENT, DOCKYARD_BRIDGE=f"dygcb{os.getpid() % 10000}",
             DOCKYARD_SUBNET=f"10.233.{os.getpid() % 250}.0/24",
             DOCKYARD_NET_PREFIX=f"dygc{os.getpid() % 100000}", DOCKYARD_CGROUP_PARENT=CGROUP_PARENT):
        s = start_stack(root / "data")
    try:
        yield s
    finally:
        code = stop_agent_stack(s, CGROUP_PARENT)
    assert code == 0, (s.data_dir / "up.log").read_text(errors="replace")


def gc_json(stack, *args: str) -> dict:
    """`dockyard --json gc run ...`: the one job's report."""
    out = json.loads(stack.cli("gc", "run", *args, "--json").stdout)
    [report] = out["reports"]
    assert report["error"] == "", report
    return report


# ---- agents ------------------------------------------------------------------------------

def push_images(stack, tmp: Path, names: list[str]) -> None:
    """One busybox image per name (distinct configs, one shared layer), as dygc/NAME:1."""
    layout = tmp / "layout"
    layer = tar_dir(busybox_rootfs(tmp / "rootfs"))
    for name in names:
        oci_layout(layout, [layer], tag=name, env=["PATH=/bin", f"DYGC_IMAGE={name}"])
    home = skopeo_env(tmp / "home")
    for name in names:
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", stack.admin_creds,
               f"oci:{layout}:{name}", f"docker://{stack.registry_addr}/dygc/{name}:1", env=home)


async def agent_state(stack) -> tuple[dict[str, str], set[str]]:
    """What the agent holds, asked in-process (fast: the dry-run window stays short):
    container name -> status, and the short references of its images."""
    nc = await bus.connect(stack.nats_url)
    try:
        client = bus.BusClient(nc)
        ps = await client.request(subjects.agent(AGENT, VERB_PS), PsRequest(all=True), PsReply)
        imgs = await client.request(subjects.agent(AGENT, VERB_IMAGES), ImagesRequest(), ImagesReply)
    finally:
        await nc.drain()
    return ({c.name: c.state.status for c in ps.containers},
            {r.removeprefix(stack.registry_addr + "/") for img in imgs.images for r in img.references})


def wait_exited(stack, name: str) -> dict:
    deadline = time.monotonic() + 15
    while (st := json.loads(stack.cli("inspect", name).stdout)[0]["State"])["Running"]:
        assert time.monotonic() < deadline, st
        time.sleep(0.05)
    return st


async def test_agents_job_removes_old_exited_containers_and_unused_images(full_stack, tmp_path):
    s = full_stack
    # other tests of this module (in any order) leave images on the agent: start with none unused
    gc_json(s, "--job", "agents", "--exited-before", "0s")
    push_images(s, tmp_path, ["old", "stopped", "running", "excl", "unused"])
    s.cli("gc", "exclude", "dygc/excl:*")
    names = ["dygc-old", "dygc-stopped", "dygc-running"]
    try:
        s.cli("run", "-d", "--name", "dygc-old", "--network", "none", "dygc/old:1", "true")
        wait_exited(s, "dygc-old")
        old_exit = time.monotonic()
        for img in ("excl", "unused"):  # pulled to the agent, then used by nothing
            s.cli("run", "--rm", "--network", "none", f"dygc/{img}:1", "true")
        s.cli("run", "-d", "--name", "dygc-running", "--network", "none", "dygc/running:1",
              "sleep", "600")
        time.sleep(max(0.0, old_exit + AGE_GAP - time.monotonic()))
        # Exited, but only just: it and its image stay.
        s.cli("run", "-d", "--name", "dygc-stopped", "--network", "none", "dygc/stopped:1", "true")
        wait_exited(s, "dygc-stopped")
        before = await agent_state(s)
        assert before[0] == {"dygc-old": "exited", "dygc-stopped": "exited", "dygc-running": "running"}
        assert before[1] == {f"dygc/{n}:1" for n in ("old", "stopped", "running", "excl", "unused")}

        def limit() -> str:
            """Just younger than the old container: it goes, the young one stays."""
            return f"{time.monotonic() - old_exit - LIMIT_MARGIN:.1f}s"

        dry = gc_json(s, "--dry-run", "--job", "agents", "--exited-before", limit())
        assert await agent_state(s) == before  # a dry run changes nothing
        real = gc_json(s, "--job", "agents", "--exited-before", limit())

        assert real["items"] == dry["items"] and real["removed"] == dry["removed"] == 3
        # Containers first (an image of a removed container is unused from then on).
        assert real["items"][0].split()[:2] == [f"{AGENT}/container", "dygc-old"]
        assert sorted(i.split()[:2] for i in real["items"][1:]) == [
            [f"{AGENT}/image", f"{s.registry_addr}/dygc/old:1"],
            [f"{AGENT}/image", f"{s.registry_addr}/dygc/unused:1"]]
        assert real["freed"] == dry["freed"] > 0  # snapshots it drops are counted by both
        assert await agent_state(s) == ({"dygc-stopped": "exited", "dygc-running": "running"},
                                        {"dygc/stopped:1", "dygc/running:1", "dygc/excl:1"})
        st = {j["job"]: j for j in json.loads(s.cli("gc", "status", "--json").stdout)["jobs"]}
        assert st["agents"]["last"]["removed"] == 3 and st["agents"]["last"]["dry_run"] is False

        # Once its container is gone, an image is no longer in use; the exclude still holds.
        s.cli("rm", "dygc-stopped")
        again = gc_json(s, "--job", "agents", "--exited-before", limit())
        assert [i.split()[:2] for i in again["items"]] == [
            [f"{AGENT}/image", f"{s.registry_addr}/dygc/stopped:1"]]
        assert (await agent_state(s))[1] == {"dygc/running:1", "dygc/excl:1"}
        # ... and the stack pulls a removed image again on demand.
        assert s.cli("run", "--rm", "--network", "none", "dygc/unused:1", "echo", "back").stdout == "back\n"
    finally:
        s.cli("rm", "-f", *names, check=False)
        s.cli("gc", "exclude", "--remove", "dygc/excl:*", check=False)


# ---- build cache ---------------------------------------------------------------------------

def build(stack, ctx: Path, tag: str) -> dict:
    return json.loads(stack.cli("build", "--json", "-t", tag, str(ctx)).stdout)


async def cache_records(stack) -> dict[str, str]:
    """KV key -> layer digest of every build-cache record (the builder's bucket, read raw)."""
    import msgspec
    from services.garbage_collector import kvscan

    class Rec(msgspec.Struct):
        digest: str | None = None

    nc = await bus.connect(stack.nats_url)
    try:
        return {k: r.digest or "" for k, r, _ in await kvscan.scan(nc, subjects.KV_BUILD_CACHE, Rec)}
    finally:
        await nc.drain()


async def test_build_cache_job_drops_records_and_layers_and_builds_still_work(full_stack, tmp_path):
    s = full_stack
    (tmp_path / "bb.tar").write_bytes(tar_dir(busybox_rootfs(tmp_path / "root")))
    s.cli("import", str(tmp_path / "bb.tar"), "busybox:latest")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    mark = uuid.uuid4().hex
    (ctx / "Dockerfile").write_text(f"FROM busybox:latest\nCOPY data.bin /\nRUN echo {mark} > /x\n")
    (ctx / "data.bin").write_bytes(os.urandom(16 * 1024))
    first = build(s, ctx, "dygc/built:1")
    layers = {st["layer"] for st in first["steps"] if st["layer"]}
    assert len(layers) == 2
    local = [s.data_dir / "builder" / "blobs" / "sha256" / d.removeprefix("sha256:") for d in layers]
    records = await cache_records(s)
    assert layers <= set(records.values()) and all(p.exists() for p in local)
    assert all(st["cached"] for st in build(s, ctx, "dygc/built:2")["steps"])  # the cache works

    dry = gc_json(s, "--dry-run", "--job", "build-cache", "--cache-max-age", "0", "--cache-max-bytes", "0")
    assert await cache_records(s) == records and all(p.exists() for p in local)
    assert dry["removed"] == len(records) and {i.split()[1] for i in dry["items"]} >= layers
    real = gc_json(s, "--job", "build-cache", "--cache-max-age", "0", "--cache-max-bytes", "0")
    assert (real["items"], real["removed"], real["freed"]) == (dry["items"], dry["removed"], dry["freed"])
    assert real["freed"] >= sum(st["size"] for st in first["steps"] if st["layer"])
    assert await cache_records(s) == {}
    assert not any(p.exists() for p in local)

    again = build(s, ctx, "dygc/built:3")  # a miss on every step, and still a good build
    assert not any(st["cached"] for st in again["steps"])
    assert {st["layer"] for st in again["steps"] if st["layer"]}
    assert s.cli("run", "--rm", "--network", "none", "dygc/built:3", "cat", "/x").stdout == mark + "\n"


# ---- schedules -----------------------------------------------------------------------------

async def test_a_scheduled_job_runs_on_its_cron_ticks(full_stack):
    s = full_stack
    nc = await bus.connect(s.nats_url)
    dec = codec.decoder(GcFinished)
    runs: list = []

    async def on_event(msg) -> None:
        ev = dec.decode(msg.data)
        if ev.trigger == "schedule":
            runs.extend(r for r in ev.reports if r.job == "uploads")

    sub = await nc.subscribe(subjects.EVENT_GC_FINISHED, cb=on_event)
    try:
        s.cli("gc", "schedule", "uploads", "*/2 * * * * *")  # seconds first: every even second
        deadline = time.monotonic() + 8
        while len(runs) < 2:
            assert time.monotonic() < deadline, runs
            await asyncio.sleep(0.05)
        st = {j["job"]: j for j in json.loads(s.cli("gc", "status", "--json").stdout)["jobs"]}
        table = s.cli("gc", "status").stdout
    finally:
        s.cli("gc", "schedule", "uploads", "", check=False)
        await sub.unsubscribe()
        await nc.drain()
    ticks = [r.tick for r in runs]
    assert all(t == int(t) and int(t) % 2 == 0 for t in ticks), ticks
    assert ticks[1] - ticks[0] == 2, ticks  # every tick, each once
    assert all(0 <= r.started_at - r.tick < 1.5 and r.error == "" for r in runs), runs
    last = st["uploads"]["last"]
    assert st["uploads"]["schedule"] == "*/2 * * * * *"
    assert last["trigger"] == "schedule" and last["tick"] >= ticks[1] and last["error"] == ""
    assert st["uploads"]["next_run"] > last["tick"] and st["uploads"]["next_run"] % 2 == 0
    row = next(ln for ln in table.splitlines() if ln.startswith("uploads"))
    assert "*/2 * * * * *" in row and time.strftime("%Y-%m-%d", time.localtime(last["started_at"])) in row
