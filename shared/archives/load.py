"""`load`: docker archives (docker, podman, skopeo `docker-archive:`), OCI archives, compressed or not.

The archive is read in place (a pipe is spooled to a temporary file first, and a
gzip- or zstd-compressed archive is decompressed to one): tar headers are indexed,
each blob is then read by offset, streamed to the registry, never held whole.
Everything an archive names is checked before a byte is uploaded: a path must stay
inside the archive (no absolute path, no `..`), name exactly one regular member (a
symlink, hard link or device is refused, as is a name given twice), and sizes
stay within bounds. An archive with an OCI `index.json` naming its images is loaded
as OCI (its manifests kept byte for byte, so their digests survive); otherwise
docker's `manifest.json` is read and an OCI manifest is made for each image.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.errors import InvalidArgument
from shared.fsutil import WriteBehind
from shared.layers.compression import Compression, detect, media_type, open_decompressed
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest, Hasher
from shared.oci.manifest import Index, parse_image_config, parse_manifest
from shared.registry.platform import select_platform

MAX_METADATA = 8 << 20  # manifest.json, index.json, a config, a manifest
CHUNK = 4 << 20  # a read per thread hop: fewer, larger hops cost less than the GIL hand-offs


@dataclass(frozen=True)
class Blob:
    member: str
    digest: Digest
    size: int
    media_type: str = ""


@dataclass(frozen=True)
class LoadImage:
    names: list[str]  # references as the archive gives them (may be empty)
    manifest: bytes
    manifest_type: str
    config: Blob
    layers: list[Blob]

    @property
    def digest(self) -> Digest:
        return Digest.from_bytes(self.manifest)


def spool(src: BinaryIO, work: Path) -> Path:
    """`src` (a pipe) as a file in `work`, decompressed if the whole archive is compressed."""
    head = src.read(4)
    comp = detect(head)
    path = work / "archive.tar"
    with open(path, "wb") as f:
        if comp is Compression.NONE:
            f.write(head)
            _copy(src, f)
        else:
            from shared.layers.compression import _Prefixed  # noqa: PLC2701 - the head already read
            _, reader = open_decompressed(_Prefixed(head, src))
            _copy(reader, f)
    return path


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    # written back as it goes, kept cached: the upload reads it right after
    behind = WriteBehind(dst.fileno(), drop=False)
    written = dst.tell()
    while chunk := src.read(CHUNK):
        dst.write(chunk)
        written += len(chunk)
        behind.wrote_to(written)


def open_input(path: Path, work: Path) -> Path:
    """A tar file to read: `path` itself, or its decompressed copy in `work`."""
    with open(path, "rb") as f:
        if detect(f.read(4)) is Compression.NONE:
            return path
        f.seek(0)
        return spool(f, work)


class Archive:
    """A tar's members by name, each checked before use."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with tarfile.open(path, "r:") as tf:
                members = tf.getmembers()
        except tarfile.TarError as e:
            raise InvalidArgument(f"not a tar archive: {e}") from e
        self._members: dict[str, tarfile.TarInfo | None] = {}
        for m in members:
            name = posixpath.normpath(m.name[2:] if m.name.startswith("./") else m.name)
            # a name given twice is ambiguous: which copy did the checks see?
            self._members[name] = None if name in self._members else m

    def has(self, name: str) -> bool:
        return name in self._members

    def member(self, name: str, what: str) -> tarfile.TarInfo:
        if (not isinstance(name, str) or not name or name.startswith("/") or "\0" in name
                or posixpath.normpath(name).split("/")[0] == ".."):
            raise InvalidArgument(f"hostile archive: {what} path {name!r} leaves the archive")
        norm = posixpath.normpath(name)
        if norm not in self._members:
            raise InvalidArgument(f"archive has no {what} {name!r}")
        m = self._members[norm]
        if m is None:
            raise InvalidArgument(f"hostile archive: {what} {name!r} appears twice")
        if not m.isreg():
            kind = "a symlink" if m.issym() else "a hard link" if m.islnk() else "not a regular file"
            raise InvalidArgument(f"hostile archive: {what} {name!r} is {kind}")
        return m

    def read(self, name: str, what: str) -> bytes:
        m = self.member(name, what)
        if m.size > MAX_METADATA:
            raise InvalidArgument(f"{what} {name!r} is larger than {MAX_METADATA} bytes")
        with open(self.path, "rb") as f:
            f.seek(m.offset_data)
            return f.read(m.size)

    def head(self, name: str, what: str, n: int = 4) -> bytes:
        m = self.member(name, what)
        with open(self.path, "rb") as f:
            f.seek(m.offset_data)
            return f.read(min(n, m.size))

    def digest_of(self, name: str, what: str) -> Digest:
        m = self.member(name, what)
        h = Hasher()
        with open(self.path, "rb") as f:
            f.seek(m.offset_data)
            left = m.size
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise InvalidArgument(f"{what} {name!r} is cut short")
                h.update(chunk)
                left -= len(chunk)
        return h.digest()

    def chunks(self, name: str):
        """A callable giving an async iterator of the member's bytes, read in a thread a chunk
        ahead of the one being sent (a disk never idle behind a socket write, nor the reverse)."""
        import asyncio
        m = self.member(name, "blob")

        async def gen():
            fd = await asyncio.to_thread(os.open, self.path, os.O_RDONLY | os.O_CLOEXEC)
            offset, end = m.offset_data, m.offset_data + m.size

            def read_ahead():
                n = min(CHUNK, end - offset)
                return asyncio.ensure_future(asyncio.to_thread(os.pread, fd, n, offset)) if n > 0 else None

            ahead = read_ahead()
            try:
                while ahead is not None:
                    chunk = await ahead
                    ahead = None
                    if not chunk:
                        raise InvalidArgument(f"archive member {name!r} is cut short")
                    offset += len(chunk)
                    ahead = read_ahead()
                    yield chunk
            finally:
                if ahead is not None:  # the fd stays open until its read is over
                    await asyncio.wait([ahead])
                os.close(fd)
        return gen


def _json(data: bytes, what: str):
    try:
        return json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"{what} is not JSON: {e}") from e


def plan(archive: Archive) -> list[LoadImage]:
    """The images in the archive, every path and size checked; OCI when index.json names them."""
    if archive.has("index.json"):
        index = _json(archive.read("index.json", "index.json"), "index.json")
        named = any((d.get("annotations") or {}) for d in index.get("manifests") or [] if isinstance(d, dict))
        if named or not archive.has("manifest.json"):
            return _oci(archive, index)
    if archive.has("manifest.json"):
        return _docker(archive)
    raise InvalidArgument("not an image archive: neither manifest.json nor index.json")


def _oci(archive: Archive, index: dict) -> list[LoadImage]:
    out = []
    try:
        idx = parse_manifest(json.dumps(index).encode(), mt.OCI_INDEX)[1]
    except Exception as e:  # noqa: BLE001 - a malformed index is bad input, whatever the parser says
        raise InvalidArgument(f"index.json is not an OCI index: {e}") from e
    for d in idx.manifests:
        ann = d.annotations or {}
        names = [n for n in (ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name"),)
                 if n]
        body = archive.read(_blob(d.digest), "manifest")
        if Digest.from_bytes(body, d.digest.algorithm) != d.digest:
            raise InvalidArgument(f"manifest {d.digest} in the archive does not match its digest")
        media, value = parse_manifest(body, d.media_type)
        if isinstance(value, Index):
            sub = select_platform(value)
            body = archive.read(_blob(sub.digest), "manifest")
            media, value = parse_manifest(body, sub.media_type)
        if media not in mt.IMAGE_MANIFESTS:
            raise InvalidArgument(f"{d.digest}: {media} is not an image manifest")
        cfg = value.config
        layers = [Blob(_blob(x.digest), x.digest, x.size, x.media_type) for x in value.layers]
        for b in [Blob(_blob(cfg.digest), cfg.digest, cfg.size), *layers]:
            if archive.member(b.member, "blob").size != b.size:
                raise InvalidArgument(f"blob {b.digest}: the archive holds {archive.member(b.member, 'blob').size}"
                                      f" bytes, the manifest says {b.size}")
        out.append(LoadImage(names, body, media, Blob(_blob(cfg.digest), cfg.digest, cfg.size), layers))
    return out


def _blob(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


def _docker(archive: Archive) -> list[LoadImage]:
    entries = _json(archive.read("manifest.json", "manifest.json"), "manifest.json")
    if not isinstance(entries, list):
        raise InvalidArgument("manifest.json is not a list of images")
    out = []
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("Config"), str) or not isinstance(e.get("Layers"), list):
            raise InvalidArgument("manifest.json: an entry lacks Config or Layers")
        cfg_bytes = archive.read(e["Config"], "config")
        try:
            diff_ids = parse_image_config(cfg_bytes).rootfs.diff_ids
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad archive
            raise InvalidArgument(f"config {e['Config']!r} is not an image config: {err}") from err
        if len(diff_ids) != len(e["Layers"]):
            raise InvalidArgument(f"config {e['Config']!r} lists {len(diff_ids)} layers, manifest.json "
                                  f"{len(e['Layers'])}")
        layers = []
        for path, diff_id in zip(e["Layers"], diff_ids):
            m = archive.member(path, "layer")
            comp = detect(archive.head(path, "layer"))
            # an uncompressed layer's digest is its diff id (the registry checks it on upload)
            digest = Digest(str(diff_id)) if comp is Compression.NONE else archive.digest_of(path, "layer")
            layers.append(Blob(path, digest, m.size, media_type(comp)))
        cfg = Blob(e["Config"], Digest.from_bytes(cfg_bytes), len(cfg_bytes), mt.OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                    "config": {"mediaType": mt.OCI_CONFIG, "digest": str(cfg.digest), "size": cfg.size},
                    "layers": [{"mediaType": b.media_type, "digest": str(b.digest), "size": b.size} for b in layers]}
        tags = e.get("RepoTags") or []
        if not all(isinstance(t, str) for t in tags):
            raise InvalidArgument("manifest.json: RepoTags must be strings")
        out.append(LoadImage(list(tags), json.dumps(manifest, separators=(",", ":")).encode(), mt.OCI_MANIFEST,
                             cfg, layers))
    return out


def workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="dockyard-load-", dir=os.environ.get("TMPDIR"))
