"""The S3 driver against a real S3 server (SeaweedFS, signatures checked): the whole storage
conformance suite, plus what only S3 has (multipart assembly, the fence's CAS across
instances, awkward keys signed by aiobotocore and checked by the server)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import msgspec
import pytest

from services.layer_store.storage.s3 import DELETE_LEASE, FenceRecord, S3Driver
from services.layer_store.storage.s3_client import S3Client
from shared.errors import Conflict, InvalidArgument, NotFound, PermissionDenied
from shared.oci.digest import Digest
from tests.unit.layer_store import test_storage_conformance as conformance
from tests.unit.layer_store.s3server import make_bucket, start_weed, stop_weed
from tests.unit.layer_store.test_storage_conformance import chunks, put, read_all, sha256

# Every conformance test runs here too, against the S3 driver: they take the `driver`
# and `driver_factory` fixtures, which this module overrides.
globals().update({name: fn for name, fn in vars(conformance).items() if name.startswith("test_")})

BUCKET = "dys3-blobs"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    weed = start_weed(tmp_path_factory.mktemp("dys3-weed"))
    server = weed.server
    try:
        make_bucket(server, BUCKET)
        yield server
    finally:
        stop_weed(weed)


@pytest.fixture
async def driver_factory(s3_server):
    """New driver instances on one fresh key prefix of the shared bucket (an empty store)."""
    prefix = f"dys3-{uuid.uuid4().hex[:12]}"
    made: list[S3Driver] = []

    def make() -> S3Driver:
        d = S3Driver(s3_server.config(BUCKET), prefix=prefix)
        made.append(d)
        return d

    yield make
    for d in made:
        await d.close()


@pytest.fixture
async def driver(driver_factory):
    return driver_factory()


async def keys(driver: S3Driver, under: str) -> list[str]:
    return [o.key async for o in driver.client.list_objects(f"{driver._prefix}{under}")]


# ---- multipart assembly ---------------------------------------------------------------

async def test_20mb_blob_is_assembled_from_segments_by_multipart(driver):
    data = os.urandom(20 << 20)
    up = await driver.start_upload()
    assert await driver.append(up.id, chunks(*(data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)))) == len(data)
    segs = await keys(driver, f"ingest/{up.id}/seg/")
    assert len(segs) == 4  # 5 + 5 + 5 + 5 MiB
    info = await driver.commit(up.id, sha256(data), len(data))
    head = await driver.client.head_object(driver._blob_key(info.digest))
    assert head.size == len(data) and head.etag.strip('"').endswith("-4")  # four parts
    assert await read_all(driver, info.digest) == data
    assert await read_all(driver, info.digest, 9 << 20, 5) == data[9 << 20:(9 << 20) + 5]
    assert await keys(driver, "ingest/") == []


async def test_small_appends_are_grouped_into_valid_parts(driver):
    # segments 3, 3, 5, 4, 2 MiB (the 9 MiB append is cut at 5): parts [3+3] uploaded,
    # [5] copied, [4+2] uploaded last
    sizes = [3 << 20, 3 << 20, 9 << 20, 2 << 20]
    data = os.urandom(sum(sizes))
    up = await driver.start_upload()
    pos = 0
    for n in sizes:
        await driver.append(up.id, chunks(data[pos:pos + n]), offset=pos)
        pos += n
    assert len(await keys(driver, f"ingest/{up.id}/seg/")) == 5
    info = await driver.commit(up.id, sha256(data))
    head = await driver.client.head_object(driver._blob_key(info.digest))
    assert head.etag.strip('"').endswith("-3")
    assert await read_all(driver, info.digest) == data


async def test_wrong_digest_leaves_no_blob_object(driver):
    data = os.urandom(4 << 20)
    up = await driver.start_upload()
    await driver.append(up.id, chunks(data))
    for wrong in (sha256(b"other"), Digest.from_bytes(b"other", "sha512")):
        with pytest.raises(InvalidArgument) as ei:
            await driver.commit(up.id, wrong)
        assert ei.value.detail_code == "DIGEST_INVALID"
    with pytest.raises(InvalidArgument):
        await driver.commit(up.id, sha256(data), len(data) + 1)
    assert await keys(driver, "blobs/") == []
    assert await keys(driver, "fence/") == []
    assert len(await keys(driver, f"ingest/{up.id}/")) == 2  # info and the one segment, intact


async def test_session_labels_are_kept(driver_factory):
    first = driver_factory()
    up = await first.start_upload(labels={"oci.commit-hook": "dockyard.x", "repo": "a/b"})
    assert up.labels == {"oci.commit-hook": "dockyard.x", "repo": "a/b"}
    second = driver_factory()
    assert (await second.upload_status(up.id)).labels == up.labels
    assert [u.labels for u in await second.list_uploads()] == [up.labels]


# ---- the fence across instances -----------------------------------------------------------

async def test_touch_and_delete_race_across_instances(driver_factory):
    # Two instances share no in-process lock: only the conditional writes decide.
    a, b = driver_factory(), driver_factory()
    infos = [await put(a, f"fleet blob {i}".encode()) for i in range(12)]
    fence = time.time() + 0.001
    await asyncio.sleep(0.005)

    async def touch(d):
        try:
            await a.touch(d)
            return True
        except NotFound:
            return False

    async def delete(d):
        try:
            await b.delete(d, unless_touched_since=fence)
            return True
        except Conflict:
            return False

    results = await asyncio.gather(*(asyncio.gather(touch(i.digest), delete(i.digest)) for i in infos))
    for info, (touched, deleted) in zip(infos, results):
        assert touched != deleted
        try:
            await b.stat(info.digest)
            exists = True
        except NotFound:
            exists = False
        assert exists == touched


async def test_a_delete_mark_holds_for_its_lease_then_is_taken_over(driver):
    info = await put(driver, b"marked")
    key = driver._fence_key(info.digest)
    head = await driver.client.head_object(driver._blob_key(info.digest))
    committed = head.metadata["committed-at"]

    await driver.client.put_object(key, msgspec.json.encode(
        FenceRecord(committed_at=committed, deleting_since=time.time())))
    with pytest.raises(NotFound):
        await driver.touch(info.digest)  # a delete holds it: the delete wins

    await driver.client.put_object(key, msgspec.json.encode(
        FenceRecord(committed_at=committed, deleting_since=time.time() - DELETE_LEASE - 1)))
    touched = await driver.touch(info.digest)  # that delete died: its mark is taken over
    assert touched.touched_at > 0
    with pytest.raises(Conflict):
        await driver.delete(info.digest, unless_touched_since=touched.touched_at)


# ---- signatures -----------------------------------------------------------------------------

ODD_KEYS = ["dys3/sp ace/plus+eq=amp&q?hash#pct%tilde~", "dys3/ünï cödé/✓.txt",
            "dys3/x;y:z@$,[]{}^`|\\\"<>!'()*"]


async def test_odd_keys_round_trip_through_a_verifying_server(s3_server):
    client = S3Client(s3_server.config(BUCKET))
    try:
        for key in ODD_KEYS:
            await client.put_object(key, key.encode(), metadata={"note": "x"})
            assert (await client.get_object(key))[0] == key.encode()
            assert (await client.head_object(key)).metadata == {"note": "x"}
        listed = [o.key async for o in client.list_objects("dys3/")]
        # SeaweedFS keeps objects as filer paths and stores a backslash as `/` (AWS keeps it);
        # the driver's own keys are hex digests and ids, never with a backslash.
        assert sorted(listed) == sorted(k.replace("\\", "/") for k in ODD_KEYS)
        for key in ODD_KEYS:
            await client.delete_object(key)
        assert [o async for o in client.list_objects("dys3/")] == []
    finally:
        await client.close()


@pytest.mark.parametrize("field", ["secret_key", "access_key"])
async def test_a_wrong_key_is_refused(s3_server, field):
    bad = S3Client(s3_server.config(BUCKET)._replace(**{field: "not-the-" + field.replace("_", "-")}))
    good = S3Client(s3_server.config(BUCKET))
    try:
        with pytest.raises(PermissionDenied):
            await bad.put_object("dys3/forged", b"x")
        await good.put_object("dys3/genuine", b"y")
        with pytest.raises(PermissionDenied):
            await bad.get_object("dys3/genuine")
        assert await good.get_object("dys3/forged") is None
        await good.delete_object("dys3/genuine")
    finally:
        await bad.close()
        await good.close()


# ---- configuration ------------------------------------------------------------------------

def test_from_env():
    env = {"DOCKYARD_S3_ENDPOINT": "http://127.0.0.1:9", "DOCKYARD_S3_BUCKET": "b",
           "DOCKYARD_S3_ACCESS_KEY": "ak", "DOCKYARD_S3_SECRET_KEY": "sk", "DOCKYARD_S3_REGION": "eu-west-3"}
    d = S3Driver.from_env(env)
    assert (d.config.bucket, d.config.region, d.name) == ("b", "eu-west-3", "s3")
    assert S3Driver.from_env({k: v for k, v in env.items() if k != "DOCKYARD_S3_REGION"}).config.region == "us-east-1"
    with pytest.raises(InvalidArgument):
        S3Driver.from_env({k: v for k, v in env.items() if k != "DOCKYARD_S3_BUCKET"})
    with pytest.raises(InvalidArgument):
        S3Driver.from_env({**env, "DOCKYARD_S3_ENDPOINT": "127.0.0.1:9"})


def test_layer_store_picks_its_driver_from_the_environment(monkeypatch, tmp_path):
    from services.layer_store.service import open_driver
    from services.layer_store.storage.filesystem import FilesystemDriver
    from shared.config import Config

    cfg = Config(data_dir=str(tmp_path))
    monkeypatch.delenv("DOCKYARD_STORAGE_DRIVER", raising=False)
    assert isinstance(open_driver(cfg), FilesystemDriver)
    for k, v in {"STORAGE_DRIVER": "s3", "S3_ENDPOINT": "http://127.0.0.1:9", "S3_BUCKET": "b",
                 "S3_ACCESS_KEY": "ak", "S3_SECRET_KEY": "sk"}.items():
        monkeypatch.setenv(f"DOCKYARD_{k}", v)
    assert isinstance(open_driver(cfg), S3Driver)
    monkeypatch.setenv("DOCKYARD_STORAGE_DRIVER", "tape")
    with pytest.raises(InvalidArgument, match="tape"):
        open_driver(cfg)
