"""What each layer of an image does to the filesystem, and the bytes later layers waste (like `dive`).

A layer's file list is read once from its tar (through the registry's own blob reading, the
layer-store client) and kept by digest in a bounded cache: layers are content addressed, so
an entry never goes stale. Waste is what a later layer removes (a whiteout, an opaque
directory) or overwrites: those bytes are still shipped in the earlier layer.
"""

from __future__ import annotations

import asyncio
import tarfile
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field

from shared.errors import InvalidArgument
from shared.layer_store_client import LayerStoreClient
from shared.layers.compression import open_decompressed
from shared.layers.conventions import OPAQUE_WHITEOUT, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX
from shared.oci.digest import Digest

CACHE_ENTRIES = 256
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class LayerFiles:
    """A layer's tar in brief: regular files and links with sizes, whiteouts, opaque dirs."""

    files: dict[str, int]  # path (no leading /) -> bytes; directories are not listed
    removed: tuple[str, ...]  # paths a whiteout deletes
    opaque: tuple[str, ...]  # directories whose lower contents it hides


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return "" if name == "." else name.strip("/")


def parse_layer_tar(fileobj) -> LayerFiles:
    """The file list of an (optionally compressed) layer tar, read as a stream."""
    files: dict[str, int] = {}
    removed: list[str] = []
    opaque: list[str] = []
    _, raw = open_decompressed(fileobj)
    try:
        with tarfile.open(fileobj=raw, mode="r|") as tar:
            for m in tar:
                path = _norm(m.name)
                parent, _, base = path.rpartition("/")
                if base == OPAQUE_WHITEOUT:
                    opaque.append(parent)
                elif base.startswith(WHITEOUT_PREFIX) and not base.startswith(WHITEOUT_META_PREFIX):
                    removed.append(f"{parent}/{base[len(WHITEOUT_PREFIX):]}".lstrip("/"))
                elif not m.isdir():
                    files[path] = m.size if m.isfile() else 0
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InvalidArgument(f"layer is not a readable tar: {e}") from e
    return LayerFiles(files, tuple(removed), tuple(opaque))


class LayerCache:
    """File lists by layer digest, at most CACHE_ENTRIES of them, one read per digest at a time."""

    def __init__(self, store: LayerStoreClient, *, entries: int = CACHE_ENTRIES):
        self._store = store
        self._entries = entries
        self._cache: OrderedDict[Digest, LayerFiles] = OrderedDict()
        self._locks: dict[Digest, asyncio.Lock] = {}

    async def files(self, digest: Digest) -> LayerFiles:
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return self._cache[digest]
        lock = self._locks.setdefault(digest, asyncio.Lock())
        try:
            async with lock:
                if digest not in self._cache:
                    self._cache[digest] = await self._read(digest)
                    while len(self._cache) > self._entries:
                        self._cache.popitem(last=False)
                return self._cache[digest]
        finally:
            if not lock.locked():
                self._locks.pop(digest, None)

    async def _read(self, digest: Digest) -> LayerFiles:
        # Spooled to disk: a layer may be far bigger than memory should hold for one page.
        with tempfile.TemporaryFile() as tmp:
            async with self._store.open_blob(digest) as resp:
                async for chunk in resp.content.iter_chunked(READ_CHUNK):
                    tmp.write(chunk)
            tmp.seek(0)
            return await asyncio.to_thread(parse_layer_tar, tmp)


@dataclass
class LayerChanges:
    added: list[tuple[str, int]] = field(default_factory=list)
    changed: list[tuple[str, int]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    wasted: int = 0  # bytes of this layer that later layers remove or overwrite


@dataclass
class Analysis:
    layers: list[LayerChanges]
    wasted: int
    culprits: list[tuple[str, int, int]]  # (path, wasted bytes, copies wasted), biggest first


def analyse(layers: list[LayerFiles]) -> Analysis:
    """Walk the layers bottom up, as overlayfs stacks them, charging each hidden file to its layer."""
    live: dict[str, tuple[int, int]] = {}  # path -> (layer index, size)
    out = [LayerChanges() for _ in layers]
    culprits: dict[str, list[int]] = {}

    def waste(path: str) -> None:
        idx, size = live.pop(path)
        out[idx].wasted += size
        culprits.setdefault(path, []).append(size)

    for i, lf in enumerate(layers):
        for d in lf.opaque:
            for p in [p for p in live if d == "" or p.startswith(d + "/")]:
                waste(p)
        for r in lf.removed:
            hit = [p for p in live if p == r or p.startswith(r + "/")]
            for p in hit:
                waste(p)
            out[i].removed.append(r)
        for path, size in lf.files.items():
            if path in live:
                waste(path)
                out[i].changed.append((path, size))
            else:
                out[i].added.append((path, size))
            live[path] = (i, size)
    ranked = sorted(((p, sum(s), len(s)) for p, s in culprits.items()), key=lambda c: (-c[1], c[0]))
    return Analysis(out, sum(c[1] for c in ranked), ranked)
