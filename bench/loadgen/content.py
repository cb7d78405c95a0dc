"""Layers and images for a load run: bytes made on the fly from one random block.

A layer is a 32-byte header unique to it followed by a window of one shared random MiB,
repeated up to its size: any number of clients stream 1-20 MB layers without holding them
in memory, and each layer still has its own digest. Digests are computed once per layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

BLOCK = os.urandom(1 << 20)
PIECE = 256 << 10  # what one write to the socket carries
MB = 1_000_000

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class Layer:
    seed: str
    size: int

    def _header(self) -> bytes:
        return hashlib.sha256(self.seed.encode()).digest()

    def pieces(self, start: int = 0, end: int | None = None) -> Iterator[bytes | memoryview]:
        """The bytes [start, end) in pieces of at most PIECE."""
        end = self.size if end is None else end
        header = self._header()
        view = memoryview(BLOCK)
        pos = start
        while pos < end:
            if pos < len(header):
                n = min(end, len(header)) - pos
                yield header[pos:pos + n]
            else:
                off = (pos - len(header)) % len(BLOCK)
                n = min(end - pos, PIECE, len(BLOCK) - off)
                yield view[off:off + n]
            pos += n

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes | memoryview]:
        for piece in self.pieces(start, end):
            yield piece

    @property
    def digest(self) -> str:
        return _digest(self)


_digests: dict[Layer, str] = {}


def _digest(layer: Layer) -> str:
    d = _digests.get(layer)
    if d is None:
        h = hashlib.sha256()
        for p in layer.pieces():
            h.update(p)
        d = _digests[layer] = f"sha256:{h.hexdigest()}"
    return d


def random_size(rng: random.Random, lo_mb: float = 1, hi_mb: float = 20) -> int:
    """1-20 MB, log-uniform: many small layers, some big ones, as real images have."""
    return int(MB * lo_mb * (hi_mb / lo_mb) ** rng.random())


@dataclass
class Blob:
    """A small blob held in memory (a config)."""
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def digest(self) -> str:
        return f"sha256:{hashlib.sha256(self.data).hexdigest()}"


@dataclass
class Image:
    repo: str
    tag: str
    config: Blob
    layers: list[Layer]
    manifest: bytes = b""
    manifest_digest: str = ""
    blobs: list[tuple[str, int]] = field(default_factory=list)  # every (digest, size) it references

    def __post_init__(self) -> None:
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": self.config.digest, "size": self.config.size},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}
                       for layer in self.layers]}, separators=(",", ":")).encode()
        self.manifest_digest = f"sha256:{hashlib.sha256(self.manifest).hexdigest()}"
        self.blobs = [(self.config.digest, self.config.size)] + [(la.digest, la.size) for la in self.layers]


def make_config(name: str, layers: list[Layer]) -> Blob:
    return Blob(json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
                            "config": {"Labels": {"load": name}},
                            "rootfs": {"type": "layers", "diff_ids": [la.digest for la in layers]}}).encode())
