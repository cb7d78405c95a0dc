"""What is particular to the filesystem driver: its layout, flock fence, and shared directories."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time

import pytest

from services.layer_store.storage import filesystem
from services.layer_store.storage.filesystem import FilesystemDriver
from shared.errors import Conflict
from shared.oci.digest import Digest


async def chunks(*parts: bytes):
    for p in parts:
        yield p


@pytest.fixture
async def driver(tmp_path):
    d = FilesystemDriver(tmp_path)
    yield d
    await d.close()


async def test_layout_ingest_then_blob(driver, tmp_path):
    data = b"x" * 5000
    digest = Digest.from_bytes(data)
    up = await driver.start_upload()
    await driver.append(up.id, chunks(data))
    ingest = tmp_path / "ingest" / up.id
    assert (ingest / "data").stat().st_size == 5000 and (ingest / "state.json").is_file()
    await driver.commit(up.id, digest)
    blob = tmp_path / "blobs" / "sha256" / digest.hex[:2] / digest.hex
    assert blob.read_bytes() == data and not ingest.exists()
    assert driver.local_path(digest) == blob
    inode = blob.stat().st_ino
    # committed again: the file is left alone, only the touch sidecar appears
    up = await driver.start_upload()
    await driver.commit(up.id, digest, chunks=chunks(data))
    assert blob.stat().st_ino == inode
    assert (blob.parent / (digest.hex + ".touched")).exists()
    assert [b.digest for b in (await driver.list())[0]] == [digest]


async def test_delete_waits_for_a_touch_holding_the_lock(driver, tmp_path):
    """Another process touching the blob holds its flock: delete waits, then sees the touch."""
    up = await driver.start_upload()
    info = await driver.commit(up.id, Digest.from_bytes(b"shared"), chunks=chunks(b"shared"))
    blob = driver.local_path(info.digest)
    fence = time.time() + 0.001
    await asyncio.sleep(0.005)
    fd = os.open(blob, os.O_RDONLY)  # a separate open file description, like another process
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        deleting = asyncio.create_task(driver.delete(info.digest, unless_touched_since=fence))
        await asyncio.sleep(0.1)
        assert not deleting.done()
        sidecar = blob.with_name(info.digest.hex + ".touched")
        sidecar.touch()
    finally:
        os.close(fd)
    with pytest.raises(Conflict):
        await deleting
    assert blob.exists()


async def test_session_appended_by_another_instance_is_rehashed(tmp_path):
    a, b = FilesystemDriver(tmp_path), FilesystemDriver(tmp_path)
    try:
        up = await a.start_upload()
        await a.append(up.id, chunks(b"abc"))
        assert await b.append(up.id, chunks(b"def"), offset=3) == 6
        # a's in-memory hash covers "abc" only: it must notice and re-read the file
        info = await a.commit(up.id, Digest.from_bytes(b"abcdef"))
        assert info.size == 6
    finally:
        await a.close()
        await b.close()


async def test_idle_sessions_are_closed_and_resume(driver, monkeypatch):
    up = await driver.start_upload()
    await driver.append(up.id, chunks(b"first "))
    monkeypatch.setattr(filesystem, "IDLE_SESSION_SECONDS", 0.0)
    await asyncio.sleep(0.01)
    other = await driver.start_upload()  # sweeps idle sessions
    assert up.id not in driver._sessions and other.id in driver._sessions
    await driver.append(up.id, chunks(b"second"), offset=6)
    assert (await driver.commit(up.id, Digest.from_bytes(b"first second"))).size == 12


async def test_an_upload_in_flight_holds_two_batches_at_most(driver):
    """What one upload costs in memory: the bytes it has read but not yet written, measured
    against the data file as the body is read (a body faster than the disk fills them)."""
    piece = os.urandom(64 << 10)
    total = 24 << 20
    sizes = []
    up = await driver.start_upload()
    data_file = driver._ingest / up.id / "data"

    async def body():
        sent = 0
        while sent < total:
            sizes.append(sent - data_file.stat().st_size)
            yield piece
            sent += len(piece)

    await driver.append(up.id, body())
    info = await driver.commit(up.id, Digest.from_bytes(piece * (total // len(piece))))
    assert info.size == total
    held = max(sizes)
    # one batch being written, one filling (each may pass BATCH_BYTES by its last piece)
    assert 0 < held <= 2 * (filesystem.BATCH_BYTES + len(piece)), held
    assert held <= (2 << 20) + 2 * len(piece), f"an upload held {held / (1 << 20):.1f} MiB"
