"""The storage driver conformance suite: every driver must pass all of it.

Add a driver by adding a factory to DRIVERS: `factory(tmp_path)` returns a new driver
instance on the same storage each time it is called (for the resume tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from services.layer_store.storage import FilesystemDriver, StorageDriver
from shared.errors import Conflict, InvalidArgument, NotFound
from shared.layer_store_client import RangeNotSatisfiable
from shared.oci.digest import Digest

DRIVERS = {
    "filesystem": lambda root: FilesystemDriver(root / "fs"),
}


@pytest.fixture(params=sorted(DRIVERS))
async def driver_factory(request, tmp_path):
    made: list[StorageDriver] = []

    def make() -> StorageDriver:
        d = DRIVERS[request.param](tmp_path)
        made.append(d)
        return d

    yield make
    for d in made:
        await d.close()  # closing twice is allowed


@pytest.fixture
async def driver(driver_factory):
    return driver_factory()


async def chunks(*parts: bytes):
    for p in parts:
        yield p


def sha256(data: bytes) -> Digest:
    return Digest.from_bytes(data)


async def put(driver: StorageDriver, data: bytes, digest: Digest | None = None):
    up = await driver.start_upload((digest or sha256(data)).algorithm)
    await driver.append(up.id, chunks(data))
    return await driver.commit(up.id, digest or sha256(data), len(data))


async def read_all(driver: StorageDriver, digest: Digest, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([c async for c in driver.read(digest, offset, length)])


async def test_conforms_to_protocol(driver):
    assert isinstance(driver, StorageDriver)
    assert driver.name


async def test_upload_in_chunks_and_commit(driver):
    data = os.urandom(3 << 20) + b"tail"
    before = time.time()
    up = await driver.start_upload()
    assert up.size == 0
    assert await driver.append(up.id, chunks(data[:1000], data[1000:2 << 20])) == 2 << 20
    assert (await driver.upload_status(up.id)).size == 2 << 20
    size = await driver.append(up.id, chunks(data[2 << 20:]), offset=2 << 20)
    assert size == len(data)
    info = await driver.commit(up.id, sha256(data), len(data))
    assert info.digest == sha256(data) and info.size == len(data)
    assert before - 1 <= info.committed_at <= time.time() + 1
    assert (await driver.stat(sha256(data))).size == len(data)
    assert await read_all(driver, sha256(data)) == data
    assert await read_all(driver, sha256(data), 5, 10) == data[5:15]
    assert await read_all(driver, sha256(data), len(data) - 4) == b"tail"
    assert await driver.list_uploads() == []
    with pytest.raises(NotFound) as ei:
        await driver.upload_status(up.id)
    assert ei.value.detail_code == "BLOB_UPLOAD_UNKNOWN"


async def test_commit_with_final_chunks_and_empty_blob(driver):
    up = await driver.start_upload()
    await driver.append(up.id, chunks(b"abc"))
    info = await driver.commit(up.id, sha256(b"abcdef"), 6, chunks(b"def"))
    assert await read_all(driver, info.digest) == b"abcdef"
    empty = await put(driver, b"")
    assert empty.size == 0 and await read_all(driver, empty.digest) == b""


async def test_wrong_digest_is_refused_and_nothing_stored(driver):
    data = b"hello world"
    wrong = sha256(b"something else")
    up = await driver.start_upload()
    await driver.append(up.id, chunks(data))
    with pytest.raises(InvalidArgument) as ei:
        await driver.commit(up.id, wrong)
    assert ei.value.detail_code == "DIGEST_INVALID"
    for d in (wrong, sha256(data)):
        with pytest.raises(NotFound):
            await driver.stat(d)
    assert (await driver.usage()).blobs == 0
    # the session is intact: the right digest still commits
    assert (await driver.commit(up.id, sha256(data))).size == len(data)


async def test_wrong_size_is_refused(driver):
    up = await driver.start_upload()
    await driver.append(up.id, chunks(b"12345"))
    with pytest.raises(InvalidArgument) as ei:
        await driver.commit(up.id, sha256(b"12345"), 6)
    assert ei.value.detail_code == "SIZE_INVALID"
    with pytest.raises(NotFound):
        await driver.stat(sha256(b"12345"))


async def test_existing_blob_is_not_rewritten(driver):
    data = b"layer bytes" * 1000
    first = await put(driver, data)
    await asyncio.sleep(0.01)
    second = await put(driver, data)
    assert second.committed_at == first.committed_at  # the stored blob was kept as it was
    assert second.touched_at > first.committed_at  # ... and its re-commit counts as a use
    assert await read_all(driver, first.digest) == data
    u = await driver.usage()
    assert (u.blobs, u.bytes, u.uploads) == (1, len(data), 0)


async def test_concurrent_commits_of_one_digest(driver):
    data = os.urandom(256 << 10)
    infos = await asyncio.gather(*(put(driver, data) for _ in range(6)))
    assert {i.digest for i in infos} == {sha256(data)}
    u = await driver.usage()
    assert (u.blobs, u.bytes, u.uploads) == (1, len(data), 0)
    assert await read_all(driver, sha256(data)) == data


async def test_out_of_order_append_is_refused(driver):
    up = await driver.start_upload()
    await driver.append(up.id, chunks(b"0123"), offset=0)
    for bad in (0, 3, 5):
        with pytest.raises(RangeNotSatisfiable):
            await driver.append(up.id, chunks(b"xx"), offset=bad)
    assert (await driver.upload_status(up.id)).size == 4
    await driver.append(up.id, chunks(b"45"), offset=4)
    assert (await driver.commit(up.id, sha256(b"012345"))).size == 6


async def test_resume_with_a_new_driver_instance(driver_factory):
    data = os.urandom(1 << 20)
    first = driver_factory()
    up = await first.start_upload()
    await first.append(up.id, chunks(data[:300_000]))
    await first.close()

    second = driver_factory()
    try:
        assert [u.id for u in await second.list_uploads()] == [up.id]
        assert (await second.upload_status(up.id)).size == 300_000
        with pytest.raises(RangeNotSatisfiable):
            await second.append(up.id, chunks(b"x"), offset=0)
        await second.append(up.id, chunks(data[300_000:]), offset=300_000)
        info = await second.commit(up.id, sha256(data), len(data))
        assert await read_all(second, info.digest) == data
    finally:
        await second.close()


async def test_labels_stay_with_the_session(driver_factory):
    first = driver_factory()
    up = await first.start_upload(labels={"oci.commit-hook": "a.b", "k": "v"})
    plain = await first.start_upload()
    assert up.labels == {"oci.commit-hook": "a.b", "k": "v"} and plain.labels == {}
    await first.append(up.id, chunks(b"abc"))
    assert (await first.upload_status(up.id)).labels == up.labels
    await first.close()
    second = driver_factory()  # kept on disk with the session, not only in memory
    try:
        listed = {u.id: u.labels for u in await second.list_uploads()}
        assert listed == {up.id: up.labels, plain.id: {}}
        assert (await second.upload_status(up.id)).labels == up.labels
    finally:
        await second.close()


async def test_big_blob_reads_back_at_any_offset(driver):
    """Big enough for several write batches (and whatever a driver does to keep such
    blobs out of memory caches); ranges at unaligned offsets and lengths."""
    data = os.urandom((9 << 20) + 123)
    up = await driver.start_upload()
    cuts = [0, 1, 70_001, 3 << 20, (5 << 20) + 7, len(data)]
    for a, b in zip(cuts, cuts[1:]):
        await driver.append(up.id, chunks(data[a:b]), offset=a)
    info = await driver.commit(up.id, sha256(data), len(data))
    assert await read_all(driver, info.digest) == data
    for offset, length in ((1, 5000), (4095, 4097), ((4 << 20) - 1, (3 << 20) + 5),
                           (len(data) - 10, None), (0, 1)):
        end = len(data) if length is None else offset + length
        assert await read_all(driver, info.digest, offset, length) == data[offset:end], (offset, length)
    assert await read_all(driver, info.digest) == data  # again, once cached or not


async def test_body_broken_off_keeps_what_arrived(driver):
    async def broken():
        yield b"a" * 1000
        raise ConnectionResetError("peer went away")

    up = await driver.start_upload()
    with pytest.raises(ConnectionResetError):
        await driver.append(up.id, broken())
    assert (await driver.upload_status(up.id)).size == 1000
    await driver.append(up.id, chunks(b"b"), offset=1000)
    assert (await driver.commit(up.id, sha256(b"a" * 1000 + b"b"))).size == 1001


async def test_cancelled_append_leaves_a_consistent_session(driver):
    arrived = asyncio.Event()

    async def stalls():
        yield b"a" * (5 << 20)
        arrived.set()
        await asyncio.sleep(30)
        yield b"never"

    up = await driver.start_upload()
    task = asyncio.create_task(driver.append(up.id, stalls()))
    await arrived.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    size = (await driver.upload_status(up.id)).size
    assert size <= 5 << 20
    await driver.append(up.id, chunks(b"a" * ((5 << 20) - size) + b"end"), offset=size)
    assert (await driver.commit(up.id, sha256(b"a" * (5 << 20) + b"end"))).size == (5 << 20) + 3


async def test_abort_and_unknown_uploads(driver):
    up = await driver.start_upload()
    await driver.append(up.id, chunks(b"junk"))
    await driver.abort(up.id)
    assert await driver.list_uploads() == []
    for bad in (up.id, "0" * 32, "../../etc", ""):
        with pytest.raises(NotFound):
            await driver.upload_status(bad)
        with pytest.raises(NotFound):
            await driver.append(bad, chunks(b"x"))
        with pytest.raises(NotFound):
            await driver.abort(bad)
        with pytest.raises(NotFound):
            await driver.commit(bad, sha256(b"x"))


async def test_unknown_blob(driver):
    d = sha256(b"never stored")
    with pytest.raises(NotFound) as ei:
        await driver.stat(d)
    assert ei.value.detail_code == "BLOB_UNKNOWN"
    for op in (driver.touch(d), driver.delete(d), read_all(driver, d)):
        with pytest.raises(NotFound):
            await op


async def test_touch_and_delete_fence(driver):
    info = await put(driver, b"old blob")
    # committed at/after the fence time: refused
    with pytest.raises(Conflict):
        await driver.delete(info.digest, unless_touched_since=info.committed_at)
    fence = time.time() + 0.001
    await asyncio.sleep(0.005)
    touched = await driver.touch(info.digest)
    assert touched.touched_at >= fence and touched.committed_at == info.committed_at
    with pytest.raises(Conflict):
        await driver.delete(info.digest, unless_touched_since=fence)
    # a later fence passes; a dry run keeps the blob
    later = time.time() + 1
    dry = await driver.delete(info.digest, unless_touched_since=later, dry_run=True)
    assert dry.size == len(b"old blob")
    assert (await driver.stat(info.digest)).size == len(b"old blob")
    gone = await driver.delete(info.digest, unless_touched_since=later)
    assert gone.digest == info.digest
    with pytest.raises(NotFound):
        await driver.stat(info.digest)
    with pytest.raises(NotFound):
        await driver.touch(info.digest)
    # it can be stored again afterwards, fresh
    again = await put(driver, b"old blob")
    assert again.touched_at == 0.0 and again.committed_at >= info.committed_at


async def test_touch_racing_delete_never_loses_a_touched_blob(driver):
    infos = [await put(driver, f"blob {i}".encode()) for i in range(16)]
    fence = time.time() + 0.001
    await asyncio.sleep(0.005)

    async def touch(d):
        try:
            await driver.touch(d)
            return True
        except NotFound:
            return False

    async def delete(d):
        try:
            await driver.delete(d, unless_touched_since=fence)
            return True
        except Conflict:
            return False

    results = await asyncio.gather(*(asyncio.gather(touch(i.digest), delete(i.digest)) for i in infos))
    for info, (touched, deleted) in zip(infos, results):
        assert touched != deleted, "exactly one of touch and delete wins"
        exists = True
        try:
            await driver.stat(info.digest)
        except NotFound:
            exists = False
        assert exists == touched


async def test_paged_list_in_digest_order(driver):
    stored = [await put(driver, f"blob {i}".encode()) for i in range(5)]
    big = b"sha512 blob"
    stored.append(await put(driver, big, Digest.from_bytes(big, "sha512")))
    want = sorted(i.digest for i in stored)
    seen, after, pages = [], "", 0
    while True:
        page, after = await driver.list(after, 2)
        pages += 1
        seen += [b.digest for b in page]
        assert all(b.size > 0 and b.committed_at > 0 for b in page)
        if not after:
            break
    assert seen == want and pages == 3
    assert (await driver.list("", 100))[1] == ""
    assert [b.digest for b in (await driver.list(want[3], 100))[0]] == want[4:]
    with pytest.raises(InvalidArgument):
        await driver.list("", 0)


async def test_usage_counts_blobs_and_uploads(driver):
    assert tuple(await driver.usage()) == (0, 0, 0, 0)
    await put(driver, b"a" * 10)
    await put(driver, b"b" * 20)
    up = await driver.start_upload()
    await driver.append(up.id, chunks(b"c" * 7))
    assert tuple(await driver.usage()) == (2, 30, 1, 7)
    assert [(u.id, u.size) for u in await driver.list_uploads()] == [(up.id, 7)]


async def test_sha512(driver):
    data = os.urandom(100_000)
    d512 = Digest(f"sha512:{hashlib.sha512(data).hexdigest()}")
    # hashed while appending
    info = await put(driver, data, d512)
    assert info.digest == d512 and await read_all(driver, d512) == data
    # a sha256 session committed under a sha512 digest is re-hashed, not trusted
    other = os.urandom(1000)
    up = await driver.start_upload()
    await driver.append(up.id, chunks(other))
    with pytest.raises(InvalidArgument):
        await driver.commit(up.id, d512)
    o512 = Digest(f"sha512:{hashlib.sha512(other).hexdigest()}")
    assert (await driver.commit(up.id, o512)).digest == o512
    with pytest.raises(InvalidArgument):
        await driver.start_upload("md5")
