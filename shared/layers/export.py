"""Build outputs made from an image's blobs: an OCI layout, a docker-loadable archive, its rootfs.

`type=oci` and `type=docker` only repackage blobs (the docker form adds the
`manifest.json` that `docker load` reads, as `docker save` and BuildKit write
it). `type=tar` and `type=local` need the flattened filesystem: each layer is
unpacked safely (unpack_layer) and the merged view is walked top-down here,
with overlay's rules (a whiteout hides, an opaque dir or a file hides below),
so no mount is needed.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from shared.layers.conventions import OVERLAY_OPAQUE_XATTR
from shared.layers.unpack import unpack_layer
from shared.oci import mediatypes as mt


@dataclass(frozen=True)
class ImageFiles:
    """An image as files: its manifest, and where each blob it names lies on disk."""

    manifest: bytes
    media_type: str
    digest: str
    config_digest: str
    layer_digests: list[str]
    blobs: dict[str, Path]  # digest -> file

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest)}


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
    tf.addfile(ti, io.BytesIO(data))


def write_layout(img: ImageFiles, out: BinaryIO, names: list[str], *, docker: bool) -> None:
    """An OCI image layout as a tar; with `docker`, also docker's `manifest.json` (RepoTags: `names`)."""
    desc = img.descriptor()
    if names:
        last = names[0].rsplit("/", 1)[-1]
        desc["annotations"] = {"io.containerd.image.name": names[0],
                               "org.opencontainers.image.ref.name": last.split(":", 1)[1] if ":" in last else "latest"}
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [desc]}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        _add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tf, "index.json", json.dumps(index).encode())
        if docker:
            entry = {"Config": _blob_name(img.config_digest), "RepoTags": names,
                     "Layers": [_blob_name(d) for d in img.layer_digests]}
            _add_bytes(tf, "manifest.json", json.dumps([entry]).encode())
        _add_bytes(tf, _blob_name(img.digest), img.manifest)
        for digest in dict.fromkeys([img.config_digest, *img.layer_digests]):
            ti = tarfile.TarInfo(_blob_name(digest))
            ti.size, ti.mode, ti.mtime = os.path.getsize(img.blobs[digest]), 0o644, 0
            with open(img.blobs[digest], "rb") as f:
                tf.addfile(ti, f)


def _blob_name(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def unpack_all(img: ImageFiles, work: Path) -> list[Path]:
    """Each layer unpacked (overlay form) under `work`, bottom first."""
    snaps = []
    for i, digest in enumerate(img.layer_digests):
        with open(img.blobs[digest], "rb") as f:
            unpack_layer(f, work / f"layer{i}")
        snaps.append(work / f"layer{i}")
    return snaps


def _opaque(p: Path) -> bool:
    try:
        return os.getxattr(p, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def merged(snaps: list[Path]) -> Iterator[tuple[str, Path]]:
    """(relative path, the entry that shows) of the merged view of `snaps` (bottom first), parents first."""
    def walk(rel: str, layers: list[Path]) -> Iterator[tuple[str, Path]]:
        # `layers`: the dirs (top first) that make up `rel`; the first one to hold a name wins.
        seen: dict[str, int] = {}
        for i, d in enumerate(layers):
            for name in os.listdir(d):
                seen.setdefault(name, i)
        for name in sorted(seen):
            top = layers[seen[name]] / name
            st = os.lstat(top)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                continue  # a whiteout
            child = f"{rel}/{name}" if rel else name
            yield child, top
            if stat.S_ISDIR(st.st_mode):
                below = []
                for d in layers[seen[name]:]:
                    p = d / name
                    try:
                        pst = os.lstat(p)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISDIR(pst.st_mode):
                        break  # a file or a whiteout hides what lies below
                    below.append(p)
                    if _opaque(p):
                        break
                yield from walk(child, below)

    if snaps:
        yield from walk("", list(reversed(snaps)))


def write_rootfs(snaps: list[Path], out: BinaryIO) -> None:
    """The flattened filesystem as one tar (numeric owners, as in a layer)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for rel, path in merged(snaps):
            ti = tf.gettarinfo(str(path), arcname=rel)
            ti.uname = ti.gname = ""
            if ti.isreg():
                with open(path, "rb") as f:
                    tf.addfile(ti, f)
            else:
                tf.addfile(ti)


def extract_rootfs(snaps: list[Path], dest: Path, scratch: Path) -> None:
    """The flattened filesystem written into `dest` (made if missing)."""
    tar = scratch / "rootfs.tar"
    with open(tar, "wb") as f:
        write_rootfs(snaps, f)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar) as tf:
        tf.extractall(dest, filter="tar")
    tar.unlink()
