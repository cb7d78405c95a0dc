"""A manifest push racing the garbage-collector, each interleaving forced step by step.

The gateway's `Registry` and the GC's jobs run in this process against the module's real
layer-store and NATS; the test pauses the push right before and right after it writes the
manifest link, and runs the GC's snapshot (and then its deletes) in between.
- registry (blob sweep): a sweep that read the links before the push's link was written
  either finds the blobs touched again after the write (its delete is refused) or deletes
  them first (the push then fails cleanly and withdraws its link).
- untagged: an index or artifact pushed after the job's snapshot bumps the manifests it
  names, so the job's delete at the old revision is refused; or the delete came first and
  the index push fails cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aiohttp
import pytest
import pytest_asyncio

from shared.bus import BusClient
from shared.errors import NotFound
from shared.layer_store_client import LayerStoreClient
from shared.messages.gc import RunRequest
from shared.oci.digest import Digest
from shared.subjects import KV_GC
from shared.registry_meta import RegistryMeta
from services.garbage_collector import snapshot
from services.garbage_collector.jobs import JobContext, Options, Settings, run_job
from services.garbage_collector.state import GcState
from services.registry_gateway.core import Registry
from tests.unit.registry.ocidata import OCI_INDEX, OCI_MANIFEST, Image, artifact, digest, index, push_blob

pytestmark = pytest.mark.asyncio(loop_scope="module")


class LinkWrite:
    """Holds a push right before (until `go`) and right after (until `resume`) its link write."""

    def __init__(self, meta: RegistryMeta):
        self.before, self.go = asyncio.Event(), asyncio.Event()
        self.after, self.resume = asyncio.Event(), asyncio.Event()
        real = meta.put_manifest

        async def put_manifest(link):
            self.before.set()
            await self.go.wait()
            rev = await real(link)
            self.after.set()
            await self.resume.wait()
            return rev

        meta.put_manifest = put_manifest  # this test's own Registry only


@pytest_asyncio.fixture(loop_scope="module")
async def registry(module_nc, suffix, layer_store, dataplane_signer):
    async with aiohttp.ClientSession() as session:
        yield Registry(await RegistryMeta.open(module_nc, suffix=suffix),
                       LayerStoreClient(module_nc, session, signer=dataplane_signer))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gc(module_nc, suffix, layer_store):
    state_suffix = "-dyrx" + uuid.uuid4().hex[:8]
    settings = Settings(registry_suffix=suffix, state_suffix=state_suffix)
    yield JobContext(nc=module_nc, bus=BusClient(module_nc),
                     state=await GcState.open(module_nc, suffix=state_suffix),
                     meta=await RegistryMeta.open(module_nc, suffix=suffix), settings=settings,
                     replica="dyrx-test")
    with contextlib.suppress(Exception):
        await module_nc.jetstream().delete_key_value(KV_GC + state_suffix)


async def run(gc: JobContext, job: str):
    opts = Options.of(RunRequest(grace_seconds=0, settle_seconds=0, untagged_retention_seconds=0),
                      gc.settings)
    report = await run_job(gc, job, opts)
    assert report.error == "", report
    return report


def snapshot_then(monkeypatch, step):
    """Make the GC's next snapshot run `step` right after reading (before any delete)."""
    real = snapshot.load

    async def load(*a, **kw):
        snap = await real(*a, **kw)
        await step()
        return snap

    monkeypatch.setattr(snapshot, "load", load)


async def exists(registry: Registry, d: str) -> bool:
    try:
        await registry.store.stat(d)
        return True
    except NotFound:
        return False


async def uploaded_image(http, registry_url, repo) -> tuple[Image, list[str]]:
    img = Image(layer_size=2000)
    blobs = [await push_blob(http, registry_url, repo, b) for b in (img.layer, img.config)]
    return img, blobs


async def test_sweep_that_missed_the_link_spares_blobs_touched_after_it(
        http, registry_url, registry, gc, monkeypatch):
    repo = "dyrx/retouch-" + uuid.uuid4().hex[:6]
    img, blobs = await uploaded_image(http, registry_url, repo)
    hold = LinkWrite(registry.meta)
    hold.resume.set()
    push = asyncio.create_task(registry.put_manifest(repo, "v1", img.manifest(), OCI_MANIFEST))
    await hold.before.wait()  # blobs touched once, body stored, link not written: T0 is later

    async def finish_push():  # the snapshot has missed the link; the sweep comes after
        hold.go.set()
        await push

    snapshot_then(monkeypatch, finish_push)
    report = await run(gc, "registry")
    link = push.result()
    everything = [*blobs, str(link.digest)]
    assert not set(everything) & set(report.items), report
    assert report.kept >= len(everything)  # refused: touched after the fence
    for d in everything:
        assert await exists(registry, d), d
    assert await registry.meta.get_tag(repo, "v1") == link.digest


async def test_sweep_between_link_and_retouch_fails_the_push_cleanly(
        http, registry_url, registry, gc, monkeypatch):
    repo = "dyrx/swept-" + uuid.uuid4().hex[:6]
    img, blobs = await uploaded_image(http, registry_url, repo)
    body = img.manifest()
    hold = LinkWrite(registry.meta)
    push = asyncio.create_task(registry.put_manifest(repo, "v1", body, OCI_MANIFEST))
    await hold.before.wait()

    async def write_link():  # the link lands after the snapshot; the sweep beats the re-touch
        hold.go.set()
        await hold.after.wait()

    snapshot_then(monkeypatch, write_link)
    report = await run(gc, "registry")
    assert {*blobs, digest(body)} <= set(report.items)
    hold.resume.set()
    with pytest.raises(NotFound) as err:
        await push
    assert err.value.detail_code == "MANIFEST_BLOB_UNKNOWN"
    assert await registry.meta.get_manifest(repo, Digest(digest(body))) is None  # withdrawn
    assert await registry.meta.get_tag(repo, "v1") is None


async def pushed_child(http, registry_url, registry, repo) -> bytes:
    img, _ = await uploaded_image(http, registry_url, repo)
    child = img.manifest()
    await registry.put_manifest(repo, digest(child), child, OCI_MANIFEST)  # untagged, as buildx does
    return child


async def test_index_pushed_after_untagged_snapshot_keeps_its_child(
        http, registry_url, registry, gc, monkeypatch):
    repo = "dyrx/index-" + uuid.uuid4().hex[:6]
    child = await pushed_child(http, registry_url, registry, repo)

    async def push_index():  # the job's plan says the child is garbage: it is not any more
        await registry.put_manifest(repo, "v1", index(child), OCI_INDEX)

    snapshot_then(monkeypatch, push_index)
    report = await run(gc, "untagged")
    assert f"{repo}@{digest(child)}" not in report.items and report.kept >= 1
    assert await registry.meta.get_manifest(repo, Digest(digest(child))) is not None
    assert await registry.meta.get_tag(repo, "v1") == Digest(digest(index(child)))


async def test_index_push_fails_cleanly_when_the_untagged_job_took_its_child(
        http, registry_url, registry, gc, monkeypatch):
    repo = "dyrx/orphan-" + uuid.uuid4().hex[:6]
    child = await pushed_child(http, registry_url, registry, repo)
    hold = LinkWrite(registry.meta)
    push = asyncio.create_task(registry.put_manifest(repo, "v1", index(child), OCI_INDEX))
    await hold.before.wait()  # the child was checked; the index link is not written yet

    async def write_index_link():
        hold.go.set()
        await hold.after.wait()

    snapshot_then(monkeypatch, write_index_link)
    report = await run(gc, "untagged")
    assert f"{repo}@{digest(child)}" in report.items  # deleted before the push bumped it
    hold.resume.set()
    with pytest.raises(NotFound) as err:
        await push
    assert err.value.detail_code == "MANIFEST_BLOB_UNKNOWN"
    assert await registry.meta.get_manifest(repo, Digest(digest(index(child)))) is None
    assert await registry.meta.get_tag(repo, "v1") is None


async def test_artifact_pushed_after_untagged_snapshot_keeps_its_subject(
        http, registry_url, registry, gc, monkeypatch):
    repo = "dyrx/subject-" + uuid.uuid4().hex[:6]
    subject = await pushed_child(http, registry_url, registry, repo)
    sig = artifact(subject, "application/vnd.dyrx.signature")
    await push_blob(http, registry_url, repo, b"{}")

    async def push_artifact():  # a kept (fresh) referrer keeps its subject
        await registry.put_manifest(repo, digest(sig), sig, OCI_MANIFEST)

    snapshot_then(monkeypatch, push_artifact)
    report = await run(gc, "untagged")
    assert f"{repo}@{digest(subject)}" not in report.items
    assert await registry.meta.get_manifest(repo, Digest(digest(subject))) is not None
    assert [r.digest for r in await registry.meta.referrers(repo, Digest(digest(subject)))] == [digest(sig)]
