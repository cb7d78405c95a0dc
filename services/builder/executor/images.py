"""Images in registries: where a name lives, base images in, built images out.

An unqualified name (`kuard-amd64:1`, `busybox`) lives in the stack's own
registry, normalised like docker (`library/kuard-amd64:1`); a name with a
registry host goes to that registry.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

from shared import http_client
from shared.errors import InvalidArgument, NotFound
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from shared.oci.manifest import Manifest, parse_manifest
from shared.oci.reference import Reference
from shared.registry.auth import TokenProvider
from shared.registry.client import RegistryClient
from services.builder.executor.scan import LayerIndex


@dataclass
class LayerRef:
    """A layer of an image being built: where its bytes are, and what it is."""

    digest: Digest
    size: int
    media_type: str
    diff_id: Digest
    repository: str = ""  # a repository of the registry that holds the blob, if any
    registry: str = ""  # base URL of that registry
    index: LayerIndex | None = None

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}


@dataclass
class BaseImage:
    reference: Reference
    digest: Digest
    config: dict
    layers: list[LayerRef] = field(default_factory=list)


MAX_CONFIGS = 64


class Registries:
    """One RegistryClient per registry; the stack's own gets service tokens over the bus."""

    def __init__(self, stack_url: str, token_provider: TokenProvider | None = None, ca_file: str = ""):
        self.stack_url = stack_url.rstrip("/")
        self.ca_file = ca_file  # the fleet CA: the stack registry is https:// off loopback
        self.token_provider = token_provider
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, RegistryClient] = {}
        # Image configs by digest (content-addressed, verified when fetched): a rebuild
        # re-resolves its base's tag but need not fetch the same config again.
        self._configs: dict[str, bytes] = {}

    async def config_blob(self, client: RegistryClient, repo: str, digest: Digest) -> bytes:
        raw = self._configs.pop(str(digest), None)
        if raw is None:
            buf = io.BytesIO()
            await client.fetch_blob_to(repo, digest, buf)
            raw = buf.getvalue()
        self._configs[str(digest)] = raw  # most recent last
        while len(self._configs) > MAX_CONFIGS:
            del self._configs[next(iter(self._configs))]
        return raw

    def url_for(self, ref: Reference) -> str:
        return self.stack_url if ref.domain is None else ref.domain

    def client(self, url: str) -> RegistryClient:
        if self._session is None:
            self._session = http_client.session(self.ca_file, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        if url not in self._clients:
            tp = self.token_provider if url == self.stack_url else None
            self._clients[url] = RegistryClient(self._session, url, token_provider=tp)
        return self._clients[url]

    async def close(self) -> None:
        self._clients.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def parse_name(text: str) -> Reference:
    try:
        ref = Reference.parse(text)
    except InvalidArgument as e:
        raise InvalidArgument(f"invalid image name {text!r}: {e.message}") from e
    return ref


async def pull_base(regs: Registries, name: str, os_: str, arch: str) -> BaseImage:
    """Manifest and config of a base image (layers are fetched only when a step needs them)."""
    ref = parse_name(name)
    url = regs.url_for(ref)
    client = regs.client(url)
    try:
        got = await client.get_manifest(ref.path, ref.reference)
    except NotFound as e:
        raise NotFound(f"base image {name}: not found in {url} ({ref.path}:{ref.reference}); "
                       "make one with `dockyard import` or push it first") from e
    digest = got.digest
    media, manifest = parse_manifest(got.body, got.media_type)
    if media in mt.INDEXES:
        chosen = next((d for d in manifest.manifests  # type: ignore[union-attr]
                       if d.platform and d.platform.os == os_ and d.platform.architecture == arch), None)
        if chosen is None:
            raise NotFound(f"base image {name}: no manifest for {os_}/{arch}")
        got = await client.get_manifest(ref.path, chosen.digest)
        digest = got.digest
        media, manifest = parse_manifest(got.body, got.media_type)
    assert isinstance(manifest, Manifest)
    config = json.loads(await regs.config_blob(client, ref.path, manifest.config.digest))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(manifest.layers):
        raise InvalidArgument(f"base image {name}: config lists {len(diff_ids)} diff_ids for "
                              f"{len(manifest.layers)} layers")
    layers = [LayerRef(digest=d.digest, size=d.size, media_type=d.media_type, diff_id=Digest(diff),
                       repository=ref.path, registry=url)
              for d, diff in zip(manifest.layers, diff_ids)]
    return BaseImage(reference=ref, digest=digest, config=config, layers=layers)


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=False, ensure_ascii=False).encode()


def image_manifest(config_bytes: bytes, layers: list[LayerRef], annotations: dict[str, str]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": str(Digest.from_bytes(config_bytes)),
                   "size": len(config_bytes)},
        "layers": [layer.descriptor() for layer in layers],
    }
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    return canonical(doc)


class BlobSource(Protocol):
    def path(self, digest: str) -> Path | None: ...

    async def fetch(self, layer: LayerRef) -> Path: ...


async def push_image(regs: Registries, tags: list[Reference], layers: list[LayerRef], blobs: BlobSource,
                     config_bytes: bytes, manifest_bytes: bytes) -> Digest:
    """Push layers (upload, or mount from the repository that has them), config, then each tag."""
    digest = Digest.from_bytes(manifest_bytes)
    for ref in tags:
        url = regs.url_for(ref)
        client = regs.client(url)
        async def one(layer: LayerRef) -> None:
            path = blobs.path(layer.digest)
            mount = layer.repository if layer.repository and layer.registry == url else None
            if path is None and mount is None and layer.repository:
                path = await blobs.fetch(layer)  # elsewhere and not mountable: through this builder
            if path is None and mount is None:
                raise NotFound(f"layer {layer.digest} is neither in this builder nor in a registry")

            async def chunks():
                src = path if path is not None else await blobs.fetch(layer)
                with open(src, "rb") as f:
                    while chunk := await asyncio.to_thread(f.read, 1 << 20):
                        yield chunk

            # A mount the registry declines becomes an upload fed by chunks().
            await client.push_blob(ref.path, layer.digest, layer.size, chunks, mount_from=mount)

        # The config (new on every build: it holds the creation time) needs no HEAD first, and
        # travels while the layers are checked: the manifest waits for both.
        await asyncio.gather(*(one(layer) for layer in layers),
                             client.push_blob(ref.path, Digest.from_bytes(config_bytes), len(config_bytes),
                                              config_bytes, check_exists=False))
        await client.put_manifest(ref.path, ref.tag or ref.reference, manifest_bytes, mt.OCI_MANIFEST)
    return digest
