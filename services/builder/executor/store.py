"""The builder's local content: layer blobs to push, and layer snapshots to stack.

    <root>/blobs/sha256/<hex>        compressed layer blobs (built here or pulled)
    <root>/snapshots/<diff hex>/     a layer as an overlay lowerdir (whiteouts as 0/0 devices)
    <root>/work/                     per-step scratch (uppers, staging, mountpoints)

A snapshot is keyed by the layer's diff_id, so a layer built by a RUN (its upper
dir, renamed in) and the same layer pulled from a registry are one snapshot.
Everything lands by rename, so a crash leaves no half snapshot or blob.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from shared.layers.unpack import unpack_layer
from shared.oci.digest import Digest


class LocalStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.snapshots = self.root / "snapshots"
        self.work = self.root / "work"
        for d in (self.blobs, self.snapshots, self.work):
            d.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}

    def blob_path(self, digest: str) -> Path:
        return self.blobs / Digest(digest).hex

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def snapshot_path(self, diff_id: str) -> Path:
        return self.snapshots / Digest(diff_id).hex

    def has_snapshot(self, diff_id: str) -> bool:
        return self.snapshot_path(diff_id).is_dir()

    def scratch_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.work))

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def adopt_blob(self, tmp_path: Path, digest: str) -> Path:
        """Move a finished, verified blob file into place."""
        dest = self.blob_path(digest)
        if dest.exists():
            tmp_path.unlink(missing_ok=True)
        else:
            os.replace(tmp_path, dest)
        return dest

    def adopt_snapshot(self, tree: Path, diff_id: str) -> Path:
        """Move a layer tree (an upper dir or a staged COPY) into place as a snapshot."""
        dest = self.snapshot_path(diff_id)
        if dest.exists():
            shutil.rmtree(tree, ignore_errors=True)
        else:
            os.replace(tree, dest)
        return dest

    async def unpack_blob(self, digest: str, diff_id: str) -> Path:
        """The snapshot of a layer whose blob is here, unpacked once."""
        async with self.lock("snap:" + diff_id):
            dest = self.snapshot_path(diff_id)
            if dest.exists():
                return dest
            staging = self.work / f"unpack-{Digest(diff_id).hex[:16]}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)

            def run() -> None:
                with open(self.blob_path(digest), "rb") as f:
                    unpack_layer(f, staging, expected_diff_id=Digest(diff_id))

            await asyncio.to_thread(run)
            os.replace(staging, dest)
            return dest
