"""The garbage-collector against a real layer-store and registry-gateway (each its own process).

Online safety: images pushed over HTTP by several tasks while the registry job runs again
and again with no grace; afterwards every tag pulls completely and the garbage made before
is gone. Untagged retention keeps the children of a tagged index. A dry run changes nothing
and lists exactly what the real run then removes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import uuid
from contextlib import contextmanager

import aiohttp
import pytest

from shared import bus, subjects
from shared.errors import NotFound
from shared.messages.gc import RunReply, RunRequest
from shared.messages.layer_store import ListReply, ListRequest, StatReply, StatRequest
from shared.oci import mediatypes as mt
from tests.e2e.conftest import start_stack, stop_stack

pytestmark = pytest.mark.e2e
# No settle wait: a manifest push re-touches its blobs after writing its link, which makes
# the runs safe without one (the argument is in services/garbage_collector/jobs/registry.py).
SETTLE = 0.0


@contextmanager
def env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def gc_stack(tmp_path_factory):
    """A registry of its own (GC with grace 0 must not sweep other tests' blobs)."""
    with env(DOCKYARD_AUTH="off"):
        s = start_stack(tmp_path_factory.mktemp("dygc-stack"),
                        only=["layer-store", "registry-gateway", "garbage-collector"])
    yield s
    assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


# ---- a small OCI client over HTTP -------------------------------------------------------

def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    def __init__(self, base: str, http: aiohttp.ClientSession):
        self.base = base
        self.http = http

    async def push_blob(self, repo: str, data: bytes) -> dict:
        d = sha(data)
        async with self.http.post(f"{self.base}/v2/{repo}/blobs/uploads/") as r:
            assert r.status == 202, await r.text()
            loc = r.headers["Location"]
        if not loc.startswith("http"):
            loc = self.base + loc
        sep = "&" if "?" in loc else "?"
        async with self.http.put(f"{loc}{sep}digest={d}", data=data,
                                 headers={"Content-Type": "application/octet-stream"}) as r:
            assert r.status == 201, await r.text()
        return {"mediaType": mt.OCI_LAYER_GZIP, "digest": d, "size": len(data)}

    async def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> tuple[int, str]:
        async with self.http.put(f"{self.base}/v2/{repo}/manifests/{ref}", data=body,
                                 headers={"Content-Type": media_type}) as r:
            return r.status, await r.text()

    async def push_image(self, repo: str, ref: str, layers: list[bytes]) -> tuple[int, str, str]:
        """(status, body, digest) of pushing config + layers + manifest."""
        cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": [sha(x) for x in layers]}}).encode()
        cdesc = await self.push_blob(repo, cfg)
        cdesc["mediaType"] = mt.OCI_CONFIG
        ldescs = [await self.push_blob(repo, x) for x in layers]
        body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": cdesc,
                           "layers": ldescs}).encode()
        status, text = await self.put_manifest(repo, ref, body, mt.OCI_MANIFEST)
        return status, text, sha(body)

    async def get(self, path: str, accept: str = "") -> tuple[int, bytes]:
        async with self.http.get(self.base + path, headers={"Accept": accept} if accept else {}) as r:
            return r.status, await r.read()

    async def pull(self, repo: str, ref: str) -> list[str]:
        """Pull a tag completely, verifying every digest; the digests fetched."""
        status, body = await self.get(f"/v2/{repo}/manifests/{ref}", mt.ACCEPT_ALL_MANIFESTS)
        assert status == 200, f"{repo}:{ref}: HTTP {status} {body[:200]!r}"
        if ref.startswith("sha256:"):
            assert sha(body) == ref
        m = json.loads(body)
        fetched = [sha(body)]
        if "manifests" in m:
            for child in m["manifests"]:
                fetched += await self.pull(repo, child["digest"])
            return fetched
        for desc in [m["config"], *m["layers"]]:
            status, data = await self.get(f"/v2/{repo}/blobs/{desc['digest']}")
            assert status == 200, f"{repo}:{ref} lost blob {desc['digest']}: HTTP {status}"
            assert sha(data) == desc["digest"] and len(data) == desc["size"]
            fetched.append(desc["digest"])
        return fetched


@pytest.fixture
async def reg(gc_stack):
    async with aiohttp.ClientSession() as http:
        yield Registry(gc_stack.registry_url, http)


@pytest.fixture
async def client(gc_stack):
    nc = await bus.connect(gc_stack.nats_url, name="dygc-test")
    yield bus.BusClient(nc)
    await nc.drain()


async def gc_run(client, jobs, **kw) -> RunReply:
    rep = await client.request(subjects.GC_RUN, RunRequest(jobs=jobs, **kw), RunReply, timeout=120)
    for r in rep.reports:
        assert r.error == "", r
    return rep


async def blob_exists(client, digest: str) -> bool:
    try:
        await client.request(subjects.BLOB_STAT, StatRequest(digest=digest), StatReply)
        return True
    except NotFound:
        return False


async def all_blobs(client) -> set[str]:
    out, after = set(), ""
    while True:
        page = await client.request(subjects.BLOB_LIST, ListRequest(after=after), ListReply)
        out |= {str(b.digest) for b in page.blobs}
        if not page.next:
            return out
        after = page.next


def rnd(n: int = 1500) -> bytes:
    return os.urandom(n)  # not `random`: pytest-randomly reseeds it per test, blobs would repeat


# ---- tests -------------------------------------------------------------------------------

async def test_online_gc_loses_nothing_under_concurrent_pushes(reg, client):
    repo0 = f"dygc/online-{uuid.uuid4().hex[:6]}"
    base = rnd(4000)
    # Garbage made before the runs: blobs no manifest names, and a deleted image's layers.
    orphans = [(await reg.push_blob(repo0, rnd()))["digest"] for _ in range(5)]
    status, _, gone_digest = await reg.push_image(repo0, "doomed", [rnd()])
    assert status == 201
    _, gone_body = await reg.get(f"/v2/{repo0}/manifests/doomed", mt.OCI_MANIFEST)
    gone_layers = [d["digest"] for d in json.loads(gone_body)["layers"]]
    async with reg.http.delete(f"{reg.base}/v2/{repo0}/manifests/{gone_digest}") as r:
        assert r.status == 202, await r.text()

    pushed: list[tuple[str, str]] = []
    refused = 0
    stop = asyncio.Event()

    async def pusher(i: int) -> None:
        nonlocal refused
        repo, n = f"{repo0}-{i}", 0
        while not stop.is_set():
            status, text, _ = await reg.push_image(repo, f"t{n}", [base, rnd()])
            if status == 201:
                pushed.append((repo, f"t{n}"))
                n += 1
            else:  # the sweep took a blob before the manifest named it: a clean refusal
                assert status == 400 and "MANIFEST_BLOB_UNKNOWN" in text, (status, text)
                refused += 1

    async def puller() -> None:
        while not stop.is_set():
            if pushed:
                await reg.pull(*random.choice(pushed))
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(pusher(i)) for i in range(4)] + [asyncio.create_task(puller())]
    runs = []
    # A hang guard only: the loop ends as soon as enough images got through, which takes seconds on a
    # quiet machine and minutes on a loaded one.
    deadline = asyncio.get_running_loop().time() + 300
    try:  # runs back to back (no settle wait) until the pushers got enough images through
        while (len(runs) < 8 or len(pushed) < 24) and asyncio.get_running_loop().time() < deadline:
            runs.append(await gc_run(client, ["registry"], grace_seconds=0, settle_seconds=SETTLE))
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    runs.append(await gc_run(client, ["registry"], grace_seconds=0, settle_seconds=SETTLE))
    assert len(pushed) >= 20, pushed
    for repo, tag in pushed:
        await reg.pull(repo, tag)
    for d in orphans + gone_layers + [gone_digest]:
        assert not await blob_exists(client, d), f"garbage {d} survived"
    assert await blob_exists(client, sha(base))
    removed = sum(r.reports[0].removed for r in runs)
    assert removed >= len(orphans) + len(gone_layers) + 2  # + the config and manifest


async def push_index(reg, repo: str, tag: str) -> tuple[str, list[str], list[list[str]]]:
    """A two-platform image: children pushed by digest (untagged), the index tagged."""
    children, child_blobs = [], []
    for arch in ("amd64", "arm64"):
        layer = rnd()
        cfg = json.dumps({"architecture": arch, "os": "linux"}).encode()
        cdesc = await reg.push_blob(repo, cfg)
        cdesc["mediaType"] = mt.OCI_CONFIG
        ldesc = await reg.push_blob(repo, layer)
        body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": cdesc,
                           "layers": [ldesc]}).encode()
        status, text = await reg.put_manifest(repo, sha(body), body, mt.OCI_MANIFEST)
        assert status == 201, text
        children.append({"mediaType": mt.OCI_MANIFEST, "digest": sha(body), "size": len(body),
                         "platform": {"architecture": arch, "os": "linux"}})
        child_blobs.append([cdesc["digest"], ldesc["digest"]])
    body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": children}).encode()
    status, text = await reg.put_manifest(repo, tag, body, mt.OCI_INDEX)
    assert status == 201, text
    return sha(body), [c["digest"] for c in children], child_blobs


async def test_untagged_retention_keeps_children_of_tagged_index(reg, client):
    repo = f"dygc/multi-{uuid.uuid4().hex[:6]}"
    idx, children, child_blobs = await push_index(reg, repo, "v1")
    status, _, lone = await reg.push_image(repo, "tmp", [rnd()])
    _, lone_body = await reg.get(f"/v2/{repo}/manifests/{lone}", mt.OCI_MANIFEST)
    lone_layer = json.loads(lone_body)["layers"][0]["digest"]
    status, _, _ = await reg.push_image(repo, "tmp", [rnd()])  # moves the tag off `lone`
    assert status == 201
    rep = await gc_run(client, ["untagged", "registry"], untagged_retention_seconds=0,
                       grace_seconds=0, settle_seconds=SETTLE)
    untagged = rep.reports[0]
    assert f"{repo}@{lone}" in untagged.items
    assert not any(c in item for c in children + [idx] for item in untagged.items)
    fetched = await reg.pull(repo, "v1")
    assert set(children) <= set(fetched) and all(b in fetched for bs in child_blobs for b in bs)
    status, _ = await reg.get(f"/v2/{repo}/manifests/{lone}", mt.OCI_MANIFEST)
    assert status == 404
    assert not await blob_exists(client, lone_layer)


async def test_dry_run_changes_nothing_and_predicts_the_real_run(reg, client):
    repo = f"dygc/dry-{uuid.uuid4().hex[:6]}"
    for _ in range(3):
        await reg.push_blob(repo, rnd())
    status, _, d1 = await reg.push_image(repo, "a", [rnd()])
    status, _, d2 = await reg.push_image(repo, "a", [rnd()])  # d1 is now untagged
    await push_index(reg, repo, "multi")
    kw = dict(untagged_retention_seconds=0, grace_seconds=0, settle_seconds=SETTLE)
    for job in ("untagged", "registry"):
        before = await all_blobs(client)
        dry = (await gc_run(client, [job], dry_run=True, **kw)).reports[0]
        assert await all_blobs(client) == before
        assert dry.removed == len(dry.items) > 0
        real = (await gc_run(client, [job], **kw)).reports[0]
        assert sorted(real.items) == sorted(dry.items)
        assert (real.removed, real.freed) == (dry.removed, dry.freed)
        if job == "registry":
            assert before - await all_blobs(client) == set(real.items)
        else:
            assert f"{repo}@{d1}" in real.items
    await reg.pull(repo, "a")
    await reg.pull(repo, "multi")


def test_cli(gc_stack):
    out = gc_stack.cli("gc", "run", "--dry-run", "--job", "registry", "--json")
    rep = json.loads(out.stdout)
    assert rep["reports"][0]["job"] == "registry" and rep["reports"][0]["dry_run"] is True
    gc_stack.cli("gc", "schedule", "uploads", "0 4 * * *")
    gc_stack.cli("gc", "policy", "dygc/app", "--keep-last", "5", "--keep-within", "7d",
                 "--keep-tags", "v*")
    gc_stack.cli("gc", "exclude", "busybox:*")
    gc_stack.cli("gc", "run", "--job", "uploads")
    st = json.loads(gc_stack.cli("gc", "status", "--json").stdout)
    jobs = {j["job"]: j for j in st["jobs"]}
    assert jobs["uploads"]["schedule"] == "0 4 * * *" and jobs["uploads"]["last"]["error"] == ""
    assert st["policies"][0]["keep_last"] == 5 and st["excludes"] == ["busybox:*"]
    table = gc_stack.cli("gc", "status").stdout
    assert "uploads" in table and "0 4 * * *" in table
    bad = gc_stack.cli("gc", "schedule", "registry", "not a cron", check=False)
    assert bad.returncode == 125 and "cron" in bad.stderr
    gc_stack.cli("gc", "schedule", "uploads", "")
    gc_stack.cli("gc", "policy", "dygc/app", "--remove")


async def test_index_pushed_during_untagged_run_keeps_its_children(gc_stack, reg, monkeypatch):
    """An index push that lands between the untagged job's snapshot and its deletes.

    The job decides from its snapshot that an old untagged manifest is garbage; an index
    naming it is pushed (and tagged) right then. The job's delete must then be refused,
    as it is for a tag pointed at the manifest meanwhile (RegistryMeta's bump protocol).
    """
    from services.garbage_collector.jobs import Options, Settings, run_job
    from services.garbage_collector.jobs import untagged
    from services.garbage_collector.service import GarbageCollector

    repo = f"dygc/race-{uuid.uuid4().hex[:6]}"
    layer = await reg.push_blob(repo, rnd())
    cfg = await reg.push_blob(repo, json.dumps({"architecture": "amd64", "os": "linux"}).encode())
    cfg["mediaType"] = mt.OCI_CONFIG
    child = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": cfg,
                        "layers": [layer]}).encode()
    assert (await reg.put_manifest(repo, sha(child), child, mt.OCI_MANIFEST))[0] == 201
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": sha(child), "size": len(child),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()

    real_load = untagged.snapshot.load

    async def load_then_push_index(*a, **kw):
        snap = await real_load(*a, **kw)
        status, text = await reg.put_manifest(repo, "v1", index, mt.OCI_INDEX)
        assert status == 201, text
        return snap

    monkeypatch.setattr(untagged.snapshot, "load", load_then_push_index)
    nc = await bus.connect(gc_stack.nats_url, name="dygc-race")
    try:
        gc = await GarbageCollector.open(nc, Settings(), replica="dygc-race")
        opts = Options.of(RunRequest(untagged_retention_seconds=0), gc.ctx.settings)
        report = await run_job(gc.ctx, "untagged", opts)
    finally:
        await nc.drain()
    assert report.error == "", report
    await reg.pull(repo, "v1")  # the tagged index and its child, completely
    assert f"{repo}@{sha(child)}" not in report.items
