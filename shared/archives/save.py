"""`save`: images of the stack registry as one tar that `docker load`, podman and skopeo read.

The tar is what docker 25+ writes: an OCI layout (`oci-layout`, `index.json`,
`blobs/sha256/...`) whose blobs docker's `manifest.json` and `repositories` name as
well. Layers go in uncompressed, as docker keeps them, so that their digests are
their diff ids: `skopeo copy docker-archive:...` (which names layers by diff id)
and the OCI manifest in the same tar agree digest for digest. Each layer streams
from the registry through a decompressor into the tar, its diff id checked on the
way; nothing is held whole in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import zstandard
from isal import isal_zlib

from shared.archives.tarwriter import TarWriter
from shared.errors import InvalidArgument
from shared.layers.compression import Compression, compression_of_media_type
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from shared.oci.manifest import Index, Manifest, parse_image_config, parse_manifest
from shared.oci.reference import Reference
from shared.progress import ACTIVE, DONE, OnBlob, nothing
from shared.registry.platform import select_platform

# aiohttp stops reading the socket once twice this is buffered: at its 64 KiB default, a
# layer's download waited while the previous chunk was decompressed, hashed and written
# (a 200 MB layer took ~1.3 s against ~1.7 s at 64 KiB, measured alternately under load).
READ_BUFSIZE = 4 << 20


class _Decompressor:
    """Incremental decompression of a layer stream (gzip members or zstd frames may be concatenated)."""

    def __init__(self, comp: Compression):
        self.comp = comp
        self._d = self._new()

    def _new(self):
        if self.comp is Compression.GZIP:
            return isal_zlib.decompressobj(31)
        if self.comp is Compression.ZSTD:
            return zstandard.ZstdDecompressor().decompressobj()
        return None

    def feed(self, data: bytes) -> bytes:
        if self._d is None:
            return data
        out = []
        try:
            while data:
                out.append(self._d.decompress(data))
                if not self._d.eof:
                    break
                data = self._d.unused_data
                self._d = self._new()
        except (isal_zlib.error, zstandard.ZstdError) as e:
            raise InvalidArgument(f"layer is not valid {self.comp.value}: {e}") from e
        return b"".join(out)


def blob_name(digest: str) -> str:
    algo, _, hexpart = str(digest).partition(":")
    return f"blobs/{algo}/{hexpart}"


@dataclass
class Saved:
    name: str  # as docker shows it (busybox:latest)
    manifest_digest: str
    config_digest: str
    diff_ids: list[str] = field(default_factory=list)


async def _image(client, ref: Reference) -> tuple[Manifest, bytes]:
    got = await client.get_manifest(ref.path, ref.reference)
    media, value = parse_manifest(got.body, got.media_type)
    if isinstance(value, Index):
        d = select_platform(value)
        got = await client.get_manifest(ref.path, str(d.digest))
        media, value = parse_manifest(got.body, got.media_type)
    if media not in mt.IMAGE_MANIFESTS:
        raise InvalidArgument(f"{ref.familiar()}: {media} is not an image manifest")
    return value, got.body


async def save(client, refs: list[Reference], out: BinaryIO, progress: OnBlob = nothing) -> list[Saved]:
    """Write the images `refs` (stack registry references) into `out` (seekable); `progress`
    hears of each layer by its registry digest, in compressed bytes received."""
    tw = TarWriter(out)
    written: set[str] = set()
    saved: list[Saved] = []
    index_entries, docker_entries, repositories = [], [], {}
    sizes: dict[str, int] = {}  # diff id -> uncompressed size (a layer two images share is written once)
    for ref in refs:
        manifest, _ = await _image(client, ref)
        cfg_bytes = bytearray()
        async with client.open_blob(ref.path, manifest.config.digest) as stream:
            async for chunk in stream:
                cfg_bytes += chunk
        cfg_bytes = bytes(cfg_bytes)
        diff_ids = [str(d) for d in parse_image_config(cfg_bytes).rootfs.diff_ids]
        if len(diff_ids) != len(manifest.layers):
            raise InvalidArgument(f"{ref.familiar()}: the config lists {len(diff_ids)} layers, "
                                  f"the manifest {len(manifest.layers)}")
        cfg_digest = str(manifest.config.digest)
        if cfg_digest not in written:
            tw.add_bytes(blob_name(cfg_digest), cfg_bytes)
            written.add(cfg_digest)
        layers = []
        for desc, diff_id in zip(manifest.layers, diff_ids):
            if diff_id not in written:
                item, size = desc.digest.short, desc.size
                progress(item, ACTIVE, 0, size)
                sizes[diff_id] = await _write_layer(client, ref.path, desc, diff_id, tw,
                                                    lambda n, item=item, size=size: progress(item, ACTIVE, n, size))
                progress(item, DONE, size, size)
                written.add(diff_id)
            layers.append({"mediaType": mt.OCI_LAYER, "digest": diff_id, "size": sizes[diff_id]})
        oci = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
               "config": {"mediaType": mt.OCI_CONFIG, "digest": cfg_digest, "size": len(cfg_bytes)},
               "layers": layers}
        body = json.dumps(oci, separators=(",", ":")).encode()
        mdigest = "sha256:" + hashlib.sha256(body).hexdigest()
        if mdigest not in written:
            tw.add_bytes(blob_name(mdigest), body)
            written.add(mdigest)
        # by digest alone: no name in the archive, as `docker save IMAGE@DIGEST`
        name = "" if ref.digest and not ref.tag else ref.with_tag(ref.tag or "latest").familiar()
        ann = {"io.containerd.image.name": _docker_name(ref),
               "org.opencontainers.image.ref.name": ref.tag or "latest"} if name else {}
        index_entries.append({"mediaType": mt.OCI_MANIFEST, "digest": mdigest, "size": len(body),
                              **({"annotations": ann} if ann else {})})
        docker_entries.append({"Config": blob_name(cfg_digest), "RepoTags": [name] if name else None,
                               "Layers": [blob_name(d) for d in diff_ids]})
        if name:
            repo, _, tag = name.rpartition(":")
            repositories.setdefault(repo, {})[tag] = diff_ids[-1].partition(":")[2] if diff_ids else ""
        saved.append(Saved(name or ref.familiar(), mdigest, cfg_digest, diff_ids))
    tw.add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    tw.add_bytes("index.json", json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                           "manifests": index_entries}).encode())
    tw.add_bytes("manifest.json", json.dumps(docker_entries).encode())
    tw.add_bytes("repositories", json.dumps(repositories).encode())
    tw.close()
    return saved


def _docker_name(ref: Reference) -> str:
    """docker's full name for the annotation: docker.io/library/busybox:latest."""
    path = ref.path
    return f"docker.io/{path}:{ref.tag or 'latest'}" if ref.domain is None else f"{ref.domain}/{path}:{ref.tag or 'latest'}"


async def _write_layer(client, repo: str, desc, diff_id: str, tw: TarWriter,
                       on_bytes: Callable[[int], None]) -> int:
    comp = compression_of_media_type(desc.media_type) if desc.media_type != mt.DOCKER_FOREIGN_LAYER \
        else Compression.GZIP
    dec = _Decompressor(comp)
    h = hashlib.sha256()

    def take(chunk: bytes) -> None:
        data = dec.feed(chunk)
        if data:
            h.update(data)
            tw.write(data)

    # Decompressing, hashing and writing a chunk (in a thread) overlaps receiving the next one.
    loop = asyncio.get_running_loop()
    pending: asyncio.Future | None = None
    tw.begin(blob_name(diff_id))
    try:
        # The diff id (from the config, itself checked against the manifest) proves every byte
        # the archive keeps: hashing the compressed stream as well would be a second pass for nothing.
        async with client.open_blob(repo, desc.digest, verify=False, read_bufsize=READ_BUFSIZE) as stream:
            async for chunk in stream:
                if stream.received > desc.size:  # nor taken past the size the manifest gives
                    raise InvalidArgument(f"layer {desc.digest}: the registry sends more than {desc.size} bytes")
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(None, take, chunk)
                on_bytes(stream.received)
    finally:
        if pending is not None:
            await asyncio.wait([pending])
    if pending is not None:
        pending.result()
    size = tw.end()
    got = "sha256:" + h.hexdigest()
    if got != Digest(diff_id):
        raise InvalidArgument(f"layer {desc.digest} uncompresses to {got}, its config says {diff_id}")
    return size
