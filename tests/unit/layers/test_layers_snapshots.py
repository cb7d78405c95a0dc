"""SnapshotStore and overlay mounts: real unpacks, real overlayfs, every mount undone."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from shared.errors import AlreadyExists, InvalidArgument, NotFound
from shared.layers import overlay
from shared.layers.diff import write_layer
from shared.layers.snapshots import SnapshotStore
from shared.oci.digest import Digest
from tests.unit.layers.layers_tarkit import compress, entry, make_tar, sha256

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and whiteouts need root")


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(str(root) + "/")]


@pytest.fixture
def store(tmp_path: Path):
    root = tmp_path / "dyly-store"
    yield SnapshotStore(root)
    for point in reversed(_mounts_under(tmp_path)):  # whatever a failing test left mounted
        overlay.unmount(Path(point), detach=True)
    assert not _mounts_under(tmp_path)


def _layer(entries) -> tuple[Digest, bytes]:
    tar = make_tar(entries)
    return Digest(sha256(tar)), compress(tar, "gzip")


def _opener(blob: bytes, calls: list[int] | None = None):
    async def open_layer():
        if calls is not None:
            calls.append(1)
            await asyncio.sleep(0.01)  # let the other callers pile up on the lock
        return io.BytesIO(blob)
    return open_layer


async def test_ensure_unpacks_once_under_concurrency(store: SnapshotStore):
    diff_id, blob = _layer([entry("a", data=b"A")])
    calls: list[int] = []
    paths = await asyncio.gather(*(store.ensure(diff_id, _opener(blob, calls)) for _ in range(10)))
    assert len(calls) == 1 and len(set(paths)) == 1
    assert (paths[0] / "a").read_bytes() == b"A"
    assert store.exists(diff_id) and store.list() == [diff_id]
    assert not list((store.root / "staging").iterdir())
    assert await store.ensure(diff_id, _opener(b"never read")) == paths[0]
    usage = await store.usage()
    assert usage.snapshots == 1 and usage.bytes > 0


async def test_ensure_from_path_and_mismatch_leaves_nothing(store: SnapshotStore, tmp_path: Path):
    diff_id, blob = _layer([entry("a", data=b"A")])
    f = tmp_path / "layer.tgz"
    f.write_bytes(blob)

    async def by_path():
        return f
    assert (await store.ensure(diff_id, by_path)).is_dir()
    wrong = Digest("sha256:" + "1" * 64)
    with pytest.raises(InvalidArgument, match="diff_id mismatch"):
        await store.ensure(wrong, by_path)
    assert not store.exists(wrong) and store.list() == [diff_id]
    assert not list((store.root / "staging").iterdir())


async def test_remove_and_crash_leftovers(store: SnapshotStore):
    diff_id, blob = _layer([entry("d/", "dir"), entry("d/f", data=b"x")])
    await store.ensure(diff_id, _opener(blob))
    await store.remove(diff_id)
    assert not store.exists(diff_id) and store.list() == []
    with pytest.raises(NotFound):
        await store.remove(diff_id)
    (store.root / "staging" / "half-unpacked").mkdir()
    (store.root / "staging" / "half-unpacked" / "f").write_text("x")
    SnapshotStore(store.root)  # a restart sweeps what a crash left in staging
    assert not list((store.root / "staging").iterdir())


async def test_active_dirs(store: SnapshotStore):
    dirs = store.new_active("dyly-c1")
    assert all(d.is_dir() for d in dirs) and store.list_active() == ["dyly-c1"]
    with pytest.raises(AlreadyExists):
        store.new_active("dyly-c1")
    with pytest.raises(InvalidArgument):
        store.new_active("../escape")
    assert store.active("dyly-c1") == dirs
    assert await store.remove_active("dyly-c1") is True
    assert await store.remove_active("dyly-c1") is False and store.list_active() == []


async def test_overlay_of_two_snapshots_and_an_upper(store: SnapshotStore):
    base_id, base = _layer([entry("etc/", "dir"), entry("etc/motd", data=b"hi"),
                            entry("etc/hostname", data=b"box"), entry("bin/", "dir"),
                            entry("bin/sh", data=b"sh", mode=0o755)])
    top_id, top = _layer([entry("etc/", "dir"), entry("etc/.wh.motd", data=b""),
                          entry("bin/", "dir"), entry("bin/ls", data=b"ls", mode=0o755)])
    lower = await store.ensure(base_id, _opener(base))
    upper_snap = await store.ensure(top_id, _opener(top))
    dirs = store.new_active("dyly-ov")
    overlay.mount_overlay([upper_snap, lower], dirs.upper, dirs.work, dirs.merged)
    try:
        m = dirs.merged
        assert overlay.is_mounted(m)
        assert sorted(os.listdir(m / "etc")) == ["hostname"]  # motd hidden by the whiteout
        assert sorted(os.listdir(m / "bin")) == ["ls", "sh"]
        # A container's changes land in the upper dir ...
        (m / "etc/hostname").write_text("changed")
        os.unlink(m / "bin/sh")
        (m / "new").write_text("n")
    finally:
        overlay.unmount(dirs.merged)
    assert not overlay.is_mounted(dirs.merged)
    assert (lower / "etc/hostname").read_text() == "box"  # snapshots are never written
    # ... and become the next layer, the deletion as a whiteout.
    out = io.BytesIO()
    res = write_layer(dirs.upper, out)
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:gz") as tf:
        names = tf.getnames()
    assert {"bin/.wh.sh", "etc/hostname", "new"} <= set(names)
    assert res.entries == len(names)
    await store.remove_active("dyly-ov")


async def test_readonly_views(store: SnapshotStore, tmp_path: Path):
    a_id, a = _layer([entry("a", data=b"A")])
    b_id, b = _layer([entry("b", data=b"B")])
    pa, pb = await store.ensure(a_id, _opener(a)), await store.ensure(b_id, _opener(b))
    target = tmp_path / "dyly-ro"
    target.mkdir()
    for lowers, expected in (([pa], ["a"]), ([pb, pa], ["a", "b"])):
        overlay.mount_readonly(lowers, target)
        try:
            assert sorted(os.listdir(target)) == expected
            with pytest.raises(OSError):
                (target / "x").write_text("x")
        finally:
            overlay.unmount(target)
    with pytest.raises(NotFound):
        overlay.unmount(target)


async def test_many_layers(store: SnapshotStore):
    """Past a page of mount options (about 55 absolute snapshot paths) mounting still works."""
    lowers = []
    for i in range(70):
        diff_id, blob = _layer([entry(f"f{i:02d}", data=str(i).encode())])
        lowers.append(await store.ensure(diff_id, _opener(blob)))
    dirs = store.new_active("dyly-many")
    top_first = list(reversed(lowers))
    opts = overlay._options([str(p) for p in top_first], str(dirs.upper), str(dirs.work))
    assert len(opts) > os.sysconf("SC_PAGESIZE")
    overlay.mount_overlay(top_first, dirs.upper, dirs.work, dirs.merged)
    try:
        assert len(os.listdir(dirs.merged)) == 70
    finally:
        overlay.unmount(dirs.merged)
    # The fallback for kernels without `lowerdir+`: paths relative to their common parent.
    overlay._relative_mount([str(p) for p in top_first[:45]], str(dirs.upper), str(dirs.work), dirs.merged)
    try:
        assert len(os.listdir(dirs.merged)) == 45
    finally:
        overlay.unmount(dirs.merged)
    await store.remove_active("dyly-many")


async def test_remove_active_unmounts(store: SnapshotStore):
    diff_id, blob = _layer([entry("a", data=b"A")])
    lower = await store.ensure(diff_id, _opener(blob))
    dirs = store.new_active("dyly-busy")
    overlay.mount_overlay([lower], dirs.upper, dirs.work, dirs.merged)
    (dirs.merged / "w").write_text("w")
    assert stat.S_ISREG(os.lstat(dirs.upper / "w").st_mode)
    assert await store.remove_active("dyly-busy")
    assert not overlay.is_mounted(dirs.merged) and not dirs.merged.exists()
