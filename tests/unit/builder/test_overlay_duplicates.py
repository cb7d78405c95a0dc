"""An image may list one layer twice: the overlay mounts keep its topmost place (no ELOOP)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from shared.layers import overlay
from shared.layers.snapshots import SnapshotStore
from shared.oci.digest import Digest
from services.runtime_agent.containers import rootfs
from tests.unit.layers.layers_tarkit import compress, entry, make_tar, sha256

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root")


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [p for p in (line.split()[4] for line in f) if p.startswith(str(root) + "/")]


@pytest.fixture
def store(tmp_path: Path):
    yield SnapshotStore(tmp_path / "dybd-dup-store")
    for point in reversed(_mounts_under(tmp_path)):
        overlay.unmount(Path(point), detach=True)
    assert not _mounts_under(tmp_path)


async def _snap(store: SnapshotStore, entries) -> Digest:
    tar = make_tar(entries)
    diff_id = Digest(sha256(tar))
    blob = compress(tar, "gzip")

    async def opener():
        return io.BytesIO(blob)

    await store.ensure(diff_id, opener)
    return diff_id


def test_distinct_lowers_keeps_the_topmost_place(tmp_path: Path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert overlay.distinct_lowers([a, b, a, c, b]) == [a, b, c]


@pytest.mark.parametrize("order", [["A", "A"], ["A", "B", "A"], ["B", "A", "A", "B"]])
async def test_container_rootfs_with_a_layer_listed_twice(store: SnapshotStore, order: list[str]):
    ids = {
        "A": await _snap(store, [entry("etc/", "dir"), entry("etc/x", data=b"from A")]),
        # B deletes A's file: where A sits above B again, the file is back.
        "B": await _snap(store, [entry("etc/", "dir"), entry("etc/.wh.x"), entry("etc/y", data=b"from B")]),
    }
    merged = rootfs.mount(store, f"dybd-dup-{len(order)}", [str(ids[n]) for n in order])
    try:
        top = order[-1]
        x = merged / "etc/x"
        assert (x.read_bytes() if x.exists() else None) == (b"from A" if top == "A" else None)
        assert (merged / "etc/y").exists() == ("B" in order)
        (merged / "etc/new").write_text("written")  # the mount is writable
        assert (merged / "etc/new").read_text() == "written"
    finally:
        rootfs.unmount(store, f"dybd-dup-{len(order)}")
