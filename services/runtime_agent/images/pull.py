"""Pulling an image onto this host: resolve, verify, unpack each layer once.

Every byte is checked: the manifest against its digest (RegistryClient), the config
and each compressed layer against their descriptors, each unpacked layer against
the config's diff_id (SnapshotStore). A layer already unpacked on this host is not
fetched again; concurrent pulls of one image share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec

from services.runtime_agent.images.store import ImageStore
from shared import http_client
from shared.errors import InvalidArgument, NotFound
from shared.layers import SnapshotStore
from shared.messages.agent import ImageRecord
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from shared.oci.manifest import Descriptor, Index, Manifest, parse_image_config, parse_manifest
from shared.oci.reference import DEFAULT_TAG, Reference
from shared.registry import CredentialStore, RegistryClient, TokenProvider, select_platform

ProgressFn = Callable[[str], Awaitable[None]]
_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
_LAYER_TYPES = mt.LAYERS | {_NONDIST_GZIP, "application/vnd.oci.image.layer.nondistributable.v1.tar"}
_PARALLEL_LAYERS = 3
MAX_CONFIG_BYTES = 8 << 20


async def _no_progress(_: str) -> None:
    return None


class ImageName:
    """A user's image name, bound to the registry that serves it."""

    def __init__(self, text: str, stack_registry: str):
        self.ref = Reference.parse(text)
        self.registry = self.ref.domain or stack_registry
        self.in_stack = self.registry == stack_registry
        self.key = f"{self.registry}/{self.ref.path}" + (
            f"@{self.ref.digest}" if self.ref.digest else f":{self.ref.tag or DEFAULT_TAG}")


class Puller:
    def __init__(self, images: ImageStore, snapshots: SnapshotStore, tmp_dir: Path, *,
                 stack_registry: str, token_provider: TokenProvider | None = None, stack_url: str = "",
                 ca_file: str = ""):
        self.images = images
        self.snapshots = snapshots
        self.tmp_dir = Path(tmp_dir)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp_dir.iterdir():  # downloads a crash left behind
            stale.unlink(missing_ok=True)
        self.stack_registry = stack_registry
        # the stack's own registry, https:// off loopback (verified with `ca_file`, the fleet CA)
        self.stack_url = stack_url or stack_registry
        self.ca_file = ca_file
        self.token_provider = token_provider
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, asyncio.Task] = {}

    def name(self, text: str) -> ImageName:
        return ImageName(text, self.stack_registry)

    def local(self, text: str) -> ImageRecord | None:
        """The image this host already has under that name (a digest also matches by itself)."""
        n = self.name(text)
        rec = self.images.by_reference(n.key)
        if rec is None and n.ref.digest is not None:
            with contextlib.suppress(NotFound):
                rec = self.images.get(n.ref.digest)
        return rec

    async def pull(self, text: str, progress: ProgressFn = _no_progress) -> ImageRecord:
        """Fetch and unpack `text`; callers pulling the same name at once share one pull."""
        n = self.name(text)
        task = self._inflight.get(n.key)
        if task is None:
            task = asyncio.ensure_future(self._pull(n, progress))
            self._inflight[n.key] = task
            task.add_done_callback(lambda _t, k=n.key: self._inflight.pop(k, None))
        return await asyncio.shield(task)

    @property
    def busy(self) -> bool:
        return bool(self._inflight)

    async def close(self) -> None:
        for t in list(self._inflight.values()):
            t.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self, n: ImageName) -> RegistryClient:
        if self._session is None:
            self._session = http_client.session(self.ca_file, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10,
                                                                                sock_read=60))
        if n.in_stack:
            return RegistryClient(self._session, self.stack_url, token_provider=self.token_provider)
        return RegistryClient(self._session, n.registry, credentials=CredentialStore())

    async def _pull(self, n: ImageName, progress: ProgressFn) -> ImageRecord:
        client = self._client(n)
        repo = n.ref.path
        await progress(f"pulling {n.key}")
        fetched = await client.get_manifest(repo, n.ref.reference)
        media_type, value = parse_manifest(fetched.body, fetched.media_type)
        digest = fetched.digest
        if isinstance(value, Index):
            desc = select_platform(value)
            fetched = await client.get_manifest(repo, desc.digest)
            if fetched.digest != desc.digest or len(fetched.body) != desc.size:
                raise InvalidArgument(f"{n.key}: platform manifest does not match its index entry",
                                      detail_code="DIGEST_INVALID")
            media_type, value = parse_manifest(fetched.body, fetched.media_type)
            digest = fetched.digest
            if not isinstance(value, Manifest):
                raise InvalidArgument(f"{n.key}: an index entry for linux/amd64 is itself an index")
        manifest: Manifest = value
        if media_type not in mt.IMAGE_MANIFESTS:
            raise InvalidArgument(f"{n.key}: {media_type} is not an image manifest")
        config_bytes = await self._fetch_config(client, repo, manifest.config)
        config = parse_image_config(config_bytes)
        if config.os != "linux" or config.architecture != "amd64":
            raise InvalidArgument(f"{n.key} is a {config.os}/{config.architecture} image; this host runs linux/amd64")
        diff_ids = list(config.rootfs.diff_ids)
        if len(diff_ids) != len(manifest.layers):
            raise InvalidArgument(f"{n.key}: {len(manifest.layers)} layers but {len(diff_ids)} diff_ids in the config")
        for layer in manifest.layers:
            if layer.media_type not in _LAYER_TYPES:
                raise InvalidArgument(f"{n.key}: unsupported layer media type {layer.media_type}")
        sem = asyncio.Semaphore(_PARALLEL_LAYERS)

        async def one(layer: Descriptor, diff_id: Digest) -> None:
            if self.snapshots.exists(diff_id):
                return
            async with sem:
                await progress(f"{layer.digest.short}: downloading {layer.size} bytes")
                await self._fetch_layer(client, repo, layer, diff_id)
                await progress(f"{layer.digest.short}: unpacked")

        await asyncio.gather(*(one(layer, d) for layer, d in zip(manifest.layers, diff_ids)))
        record = ImageRecord(
            digest=str(digest), references=[n.key], config_digest=str(manifest.config.digest),
            diff_ids=[str(d) for d in diff_ids], size=manifest.config.size + sum(x.size for x in manifest.layers),
            created=config.created or "", pulled_at=time.time(), os=config.os, architecture=config.architecture)
        old = self.images.by_reference(n.key)
        if old is not None and old.digest == record.digest:
            record = msgspec.structs.replace(record, references=sorted(set(old.references) | {n.key}))
        elif (same := _get(self.images, record.digest)) is not None:
            record = msgspec.structs.replace(record, references=sorted(set(same.references) | {n.key}))
        self.images.put(record, config_bytes)
        await progress(f"{n.key}: {digest}")
        return record

    async def _fetch_config(self, client: RegistryClient, repo: str, desc: Descriptor) -> bytes:
        if desc.size > MAX_CONFIG_BYTES:
            raise InvalidArgument(f"image config of {desc.size} bytes is too large")
        buf = bytearray()
        async with client.open_blob(repo, desc.digest) as stream:
            async for chunk in stream:
                buf += chunk
                if len(buf) > desc.size:
                    raise InvalidArgument(f"image config {desc.digest} is larger than its descriptor says",
                                          detail_code="SIZE_INVALID")
        if len(buf) != desc.size:
            raise InvalidArgument(f"image config {desc.digest}: {len(buf)} bytes, descriptor says {desc.size}",
                                  detail_code="SIZE_INVALID")
        return bytes(buf)

    async def _fetch_layer(self, client: RegistryClient, repo: str, layer: Descriptor, diff_id: Digest) -> None:
        path = self.tmp_dir / f"{layer.digest.hex}.{os.urandom(4).hex()}"
        try:
            size = await client.fetch_blob_to(repo, layer.digest, path)
            if size != layer.size:
                raise InvalidArgument(f"layer {layer.digest}: {size} bytes, descriptor says {layer.size}",
                                      detail_code="SIZE_INVALID")

            async def opener() -> Path:
                return path

            await self.snapshots.ensure(diff_id, opener)
        finally:
            path.unlink(missing_ok=True)


def _get(images: ImageStore, digest: str) -> ImageRecord | None:
    try:
        return images.get(digest)
    except NotFound:
        return None

