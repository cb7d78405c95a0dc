"""kill -9 loses nothing: each service of a real `dockyard up` (and its nats-server) is
killed in the middle of a push, a pull, a build or a GC run, `up` restarts it, and then:
what was acknowledged before the kill reads back and verifies; nothing half-written is
served; interrupted uploads resume from their reported Range or are cleaned by GC; the
build reruns from its cache; containers started before the kill still run.

"The middle" is a byte count or an event the test waits for, never a sleep: request
bodies pause after N bytes (tests/faults/oci.py `Paused`) until the kill is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shared import subjects
from shared.bus import kv_key
from shared.messages.common import Empty
from shared.messages.gc import RunReply, RunRequest, StatusReply
from tests.faults import procs
from tests.faults.checks import (WAIT, all_services_answer, assert_not_served, assert_nothing_lost,
                                 blob_file, kv_state, small_receive_buffer, until, upload_id, uploads)
from tests.faults.conftest import AGENT, GC_LEASE_TTL
from tests.faults.oci import Paused, Registry, sha256
from tests.faults.upstream import Upstream

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

MiB = 1 << 20
BIG = 50 * MiB
CHUNK = 8 * MiB
# The layer-store writes an upload in batches of 4 MiB: a session's Range grows by batches.
BATCH = 4 * MiB


# ---- layer-store -----------------------------------------------------------------------------

async def test_layer_store_kill9_mid_chunked_push_monolithic_push_and_pull(fstack, reg, client, images, survivor):
    s = fstack
    acked = images.with_layer("acked.bin", os.urandom(16 * MiB))
    await images.push(reg, "faults/acked", "1", acked)
    big = images.with_layer("big.bin", os.urandom(BIG))
    big_layer = big.blobs[big.layers[1]]

    # chunked: three chunks acknowledged
    loc = await reg.start_upload("faults/big")
    offset = 0
    for _ in range(3):
        loc, offset = await reg.patch("faults/big", loc, big_layer[offset:offset + CHUNK], offset)
    assert offset == 3 * CHUNK
    # monolithic: a PUT whose body stops after 6 MiB of 12
    mono = os.urandom(12 * MiB)
    mono_loc = await reg.start_upload("faults/mono")
    body = Paused(mono, 6 * MiB)
    put = asyncio.create_task(reg.finish("faults/mono", mono_loc, sha256(mono), body))
    # a pull that has read 1 MiB of a 16 MiB layer (the rest cannot all be in socket buffers)
    pulled = bytearray()
    layer = acked.layers[1]
    async with contextlib.AsyncExitStack() as pulling:
        slow = await pulling.enter_async_context(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(socket_factory=small_receive_buffer)))
        puller = Registry(slow, s.registry_addr, ("admin", s.admin_password))
        pull = await pulling.enter_async_context(
            puller.open_blob("faults/acked", layer, await reg.headers("faults/acked")))
        pulled += await pull.content.readexactly(MiB)

        async def mono_landed() -> bool:
            return (await uploads(client)).get(upload_id(mono_loc), 0) >= BATCH
        await until("the monolithic upload's first batch on disk", mono_landed)

        old = procs.kill9(s, "layer-store")
        body.release()
        with pytest.raises((aiohttp.ClientError, AssertionError)):
            await put
        with pytest.raises(aiohttp.ClientError):
            while chunk := await pull.content.read(MiB):
                pulled += chunk
    assert len(pulled) < len(acked.blobs[layer])
    await procs.wait_restarted(s, "layer-store", old)

    # nothing half-written is served
    await assert_not_served(s, reg, client, "faults/mono", sha256(mono))
    await assert_not_served(s, reg, client, "faults/big", big.layers[1])
    await assert_nothing_lost(s, reg, images, survivor)
    # the pull resumes where it broke off
    async with reg.open_blob("faults/acked", layer, await reg.headers(
            "faults/acked", Range=f"bytes={len(pulled)}-")) as r:
        assert r.status == 206, await r.text()
        pulled += await r.read()
    assert sha256(bytes(pulled)) == layer
    # the chunked upload resumes from the Range its session reports
    offset = await reg.upload_size("faults/big", loc)
    assert offset == 3 * CHUNK
    while offset < BIG:
        loc, offset = await reg.patch("faults/big", loc, big_layer[offset:offset + CHUNK], offset)
    await reg.finish("faults/big", loc, big.layers[1])
    await images.push(reg, "faults/big", "1", big, have={big.layers[1]})
    await reg.verify("faults/big", "1", big)
    # the broken monolithic session is the uploads job's to clean
    held = (await uploads(client))[upload_id(mono_loc)]
    assert BATCH <= held < len(mono)
    report = gc_run(s, "--job", "uploads", "--upload-idle", "0s")
    assert upload_id(mono_loc) in report["items"]
    assert upload_id(mono_loc) not in await uploads(client)
    assert not (s.data_dir / "layer-store" / "ingest" / upload_id(mono_loc)).exists()
    # ... and a new push of the same blob goes through
    assert await reg.push_blob("faults/mono", mono) == sha256(mono)
    assert await reg.get_blob("faults/mono", sha256(mono)) == mono


async def test_layer_store_kill9_inside_a_commit_never_lets_the_blob_grow(fstack, reg, client, images, survivor):
    """A commit links the session's file as the blob, then unlinks it from the session; a kill
    between the two (a window of microseconds, so the test makes the state it leaves by hand,
    after a real kill -9) must not let a resumed session append to the blob's bytes."""
    s = fstack
    data = os.urandom(2 * MiB)
    digest = sha256(data)
    loc = await reg.start_upload("faults/torn")
    loc, size = await reg.patch("faults/torn", loc, data, 0)
    await procs.kill9_and_wait(s, "layer-store")
    session = s.data_dir / "layer-store" / "ingest" / upload_id(loc) / "data"
    blob = blob_file(s, digest)
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.link(session, blob)  # what the killed commit had done

    with pytest.raises(AssertionError, match="409"):
        await reg.patch("faults/torn", loc, b"more bytes", size)
    assert sha256(blob.read_bytes()) == digest
    await reg.finish("faults/torn", loc, digest)  # the retried commit completes
    assert await reg.get_blob("faults/torn", digest) == data
    assert not session.exists()
    await assert_nothing_lost(s, reg, images, survivor)


def gc_run(stack, *args: str) -> dict:
    out = json.loads(stack.cli("gc", "run", *args, "--json").stdout)
    [report] = out["reports"]
    assert report["error"] == "", report
    return report


# ---- registry-gateway ------------------------------------------------------------------------

async def test_registry_gateway_kill9_mid_relayed_chunk(fstack, reg, client, images, survivor):
    s = fstack
    small = images.with_layer("gw.bin", os.urandom(MiB))
    await images.push(reg, "faults/gw", "1", small)
    blob = os.urandom(16 * MiB)
    direct = await reg.start_upload("faults/gw-chunked")
    # the session continued through the gateway's own URL: the gateway relays the bytes
    loc = reg.resolve(f"/v2/faults/gw-chunked/blobs/uploads/{upload_id(direct)}")
    loc, offset = await reg.patch("faults/gw-chunked", loc, blob[:4 * MiB], 0)
    body = Paused(blob[offset:], 6 * MiB)
    patch = asyncio.create_task(reg.patch("faults/gw-chunked", loc, body, offset))

    async def relayed() -> bool:
        return (await uploads(client)).get(upload_id(direct), 0) > offset
    await until("a relayed batch of the second chunk on disk", relayed)

    old = procs.kill9(s, "registry-gateway")
    body.release()
    with pytest.raises((aiohttp.ClientError, AssertionError)):
        await patch
    await procs.wait_restarted(s, "registry-gateway", old)

    await assert_not_served(s, reg, client, "faults/gw-chunked", sha256(blob))
    await assert_nothing_lost(s, reg, images, survivor)  # tags, manifests, links; tokens from the new gateway
    # what reached the layer-store before the relay broke stays; the client resumes from there
    offset = await reg.upload_size("faults/gw-chunked", loc)
    assert 4 * MiB < offset < len(blob)
    loc, offset = await reg.patch("faults/gw-chunked", loc, blob[offset:], offset)
    await reg.finish("faults/gw-chunked", loc, sha256(blob))
    assert await reg.get_blob("faults/gw-chunked", sha256(blob)) == blob


# ---- builder ---------------------------------------------------------------------------------

def wait_for_text(path: Path, needle: str, proc: subprocess.Popen, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while needle not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"exited {proc.returncode} before {needle!r}:\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {needle!r} within {timeout:.0f}s:\n{path.read_text()}"
        time.sleep(0.02)


def build_json(stack, ctx: Path, tag: str) -> dict:
    return json.loads(stack.cli("build", "--json", "--network", "host", "-t", tag, str(ctx)).stdout)


@pytest.fixture(scope="module")
def killed_build(fstack, images, tmp_path_factory) -> tuple[str, dict]:
    """A build killed -9 in its last RUN step (the builder is restarted), then run again:
    the first build's marker and the rerun's reply."""
    s = fstack
    tmp = tmp_path_factory.mktemp("dyfk-build")
    (tmp / "bb.tar").write_bytes(images.base)
    s.cli("import", str(tmp / "bb.tar"), "busybox:latest")
    # The last step waits, after its first output, until the test opens this port.
    gate = socket.socket()
    gate.bind(("127.0.0.1", 0))
    try:
        ctx = tmp / "ctx"
        ctx.mkdir()
        mark = os.urandom(8).hex()
        (ctx / "data.bin").write_bytes(os.urandom(64 * 1024))
        (ctx / "Dockerfile").write_text(
            "FROM busybox:latest\nCOPY data.bin /data.bin\n"
            f"RUN echo {mark} > /one\n"
            f"RUN echo faults-mid-build && until nc 127.0.0.1 {gate.getsockname()[1]} -e true; "
            "do sleep 0.1; done && echo two > /two\n")
        log = tmp / "build.log"
        with open(log, "wb") as out:
            build = subprocess.Popen([sys.executable, "-m", "services.cli.main", "build", "--network", "host",
                                      "-t", "faults/built:1", str(ctx)], env=s.env, stdout=out, stderr=out)
        try:
            wait_for_text(log, "faults-mid-build", build)
            old = procs.kill9(s, "builder")
        finally:
            build.kill()  # its reply will never come
            build.wait()
        asyncio.run(procs.wait_restarted(s, "builder", old))
        gate.listen()  # the killed build's container may finish now; so may the rerun's
        return mark, build_json(s, ctx, "faults/built:1")
    finally:
        gate.close()


async def test_builder_kill9_mid_run_step_then_the_rerun_hits_the_cache(fstack, reg, images, killed_build,
                                                                       survivor):
    mark, again = killed_build
    steps = again["steps"]
    # COPY and the first RUN had completed before the kill: cached; the killed step runs again
    assert [st["cached"] for st in steps[-3:]] == [True, True, False], steps
    out = fstack.cli("run", "--rm", "--network", "none", "faults/built:1", "cat", "/one", "/two").stdout
    assert out == f"{mark}\ntwo\n"
    await assert_nothing_lost(fstack, reg, images, survivor)


@pytest.mark.xfail(strict=True, reason="services/builder does not unmount, on start, the overlay of a RUN "
                   "step whose builder was killed: it stays mounted on the host under builder/work/")
def test_builder_restart_leaves_no_mount_of_the_killed_build(fstack, killed_build):
    assert procs.mounts_under(fstack.data_dir / "builder" / "work") == []


# ---- runtime-agent ---------------------------------------------------------------------------

async def acli(stack, *args: str, timeout: float = 120) -> str:
    """`dockyard ARGS` without blocking this event loop (it serves the upstream registry)."""
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", *args, env=stack.env,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    assert p.returncode == 0, f"dockyard {' '.join(args)} exited {p.returncode}:\n{out.decode()}\n{err.decode()}"
    return out.decode()


def sizes(d: Path) -> list[int]:
    out = []
    for p in d.iterdir():
        with contextlib.suppress(FileNotFoundError):  # done and removed while we looked
            out.append(p.stat().st_size)
    return out


async def test_runtime_agent_kill9_mid_pull_keeps_running_containers(fstack, reg, images, survivor, tmp_path):
    s = fstack
    await survivor.assert_runs(s, reg.http)
    payload = os.urandom(16 * MiB)
    up = Upstream("faults/up", "1", images.with_layer("up.bin", payload), pause_at=8 * MiB)
    downloads = s.data_dir / "runtime-agent" / AGENT / "downloads"
    async with up.serving():
        ref = f"{up.addr}/faults/up:1"
        log = tmp_path / "run.log"
        with open(log, "wb") as out:
            run = subprocess.Popen([sys.executable, "-m", "services.cli.main", "run", "--rm", "--network",
                                    "none", ref, "true"], env=s.env, stdout=out, stderr=out)
        try:
            async def mid_download() -> bool:
                assert run.poll() is None, log.read_text()
                return up.paused.is_set() and max(sizes(downloads), default=0) >= 4 * MiB
            await until("the agent's download at 4 MiB", mid_download)
            old = procs.kill9(s, "runtime-agent")
        finally:
            run.kill()
            run.wait()
        await procs.wait_restarted(s, "runtime-agent", old)

        await survivor.assert_runs(s, reg.http)  # same process, its published port still reaches it
        assert s.cli("logs", survivor.name).stdout == "started\n"
        assert not list(downloads.iterdir()), "a partial download survived the restart"
        held = json.loads(s.cli("images", "--host", AGENT, "--json").stdout)
        assert not any(ref in r["references"] for r in held), held  # no half-pulled image
        up.release()
        out = await acli(s, "run", "--rm", "--network", "none", ref, "busybox", "sha256sum", "/up.bin")
        assert out.split()[0] == sha256(payload).removeprefix("sha256:")
    await assert_nothing_lost(s, reg, images, survivor)
    s.cli("kill", "-s", "CONT", survivor.name)  # the new agent controls the old container


# ---- garbage-collector -----------------------------------------------------------------------

async def running_on(client, job: str) -> str:
    status = await client.request(subjects.GC_STATUS, Empty(), StatusReply)
    return next(j.running_on for j in status.jobs if j.job == job)


@contextlib.asynccontextmanager
async def registry_lease_held(client) -> AsyncIterator[str]:
    """A registry run that has listed the blobs and waits out a long settle time, holding the
    job's lease; yields the replica holding it. Its reply is not waited for."""
    run = asyncio.create_task(client.request(
        subjects.GC_RUN, RunRequest(jobs=["registry"], grace_seconds=0, settle_seconds=600), RunReply,
        timeout=600))
    try:
        async def holding() -> bool:
            return await running_on(client, "registry") != ""
        await until("the registry job's lease taken", holding)
        yield await running_on(client, "registry")
    finally:
        run.cancel()


async def test_garbage_collector_kill9_mid_run_then_a_new_run_sweeps(fstack, reg, client, images, survivor):
    s = fstack
    await images.push(reg, "faults/kept", "1", images.with_layer("kept.bin", os.urandom(MiB)))
    garbage = [await reg.push_blob("faults/garbage", os.urandom(64 * 1024)) for _ in range(5)]
    async with registry_lease_held(client) as dead:
        old = procs.kill9(s, "garbage-collector")
    await procs.wait_restarted(s, "garbage-collector", old)
    await images.verify_acked(reg)

    # The dead replica's lease expires (DOCKYARD_GC_LEASE_TTL); then a run takes the job over.
    deadline = time.monotonic() + 10 * float(GC_LEASE_TTL)
    while True:
        [report] = (await client.request(subjects.GC_RUN, RunRequest(jobs=["registry"], grace_seconds=0,
                                                                     settle_seconds=0), RunReply)).reports
        if not report.error.startswith("already running"):
            break
        assert dead in report.error, report
        assert time.monotonic() < deadline, f"the lease of {dead} never expired: {report}"
        await asyncio.sleep(0.2)
    assert report.error == "" and report.replica != dead, report
    assert set(garbage) <= set(report.items), report
    for d in garbage:
        assert not blob_file(s, d).exists()
        assert await reg.blob_status("faults/garbage", d) == 404
    await assert_nothing_lost(s, reg, images, survivor)  # nothing tagged was swept


# ---- nats-server -----------------------------------------------------------------------------

def rewritten(bucket: str, key: str) -> bool:
    """Entries renewed all the time while the stack runs (heartbeats, held leases)."""
    return bucket in (subjects.KV_AGENTS, subjects.KV_BUILD_LEASES) or key.startswith("lease.")


async def test_nats_server_kill9_keeps_users_tags_leases_and_heartbeats(fstack, reg, client, images, survivor):
    s = fstack
    await images.push(reg, "faults/nats", "1", images.with_layer("nats.bin", os.urandom(MiB)))
    async with registry_lease_held(client) as holder:  # a lease held across the outage
        before = await kv_state(s)
        assert AGENT in before[subjects.KV_AGENTS] and kv_key("admin") in before[subjects.KV_USERS]

        procs.kill9_nats(s)
        await until("every service answering on the restarted nats-server", lambda: all_services_answer(s))
        after = await kv_state(s)
        for bucket, entries in before.items():
            assert bucket in after, f"KV bucket {bucket} lost"
            assert entries.keys() <= after[bucket].keys(), f"keys of KV bucket {bucket} lost"
            kept = {k: v for k, v in entries.items() if not rewritten(bucket, k)}
            assert {k: after[bucket][k] for k in kept} == kept, f"KV bucket {bucket} changed"
        lease = json.loads(after[subjects.KV_GC][kv_key("lease", "registry")])
        assert lease["holder"] == holder, lease

        async def heartbeat_after_restart() -> bool:
            return (await kv_state(s))[subjects.KV_AGENTS][AGENT] != after[subjects.KV_AGENTS][AGENT]
        await until("a new heartbeat of the agent", heartbeat_after_restart)
        # users: a fresh login; tags and manifests: every acknowledged image
        fresh = Registry(reg.http, s.registry_addr, ("admin", s.admin_password))
        await assert_nothing_lost(s, fresh, images, survivor)
        assert "faults/nats" in s.cli("images").stdout
    # the run holding the lease would hold it for its whole settle time: end it the hard way
    await procs.kill9_and_wait(s, "garbage-collector")
