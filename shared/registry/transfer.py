"""Copying an image, or a whole index, from one registry (repository) to another.

Children go before their parents (blobs before a manifest, manifests before an
index), so the destination never holds a manifest that points at nothing. Blobs the
destination already has are skipped; within one registry they are mounted; otherwise
they stream through, verified, never held whole in memory.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from shared.oci.manifest import Descriptor, Index, Manifest, parse_manifest

from .client import RegistryClient
from .platform import select_platform


@dataclass
class CopyStats:
    blobs_copied: int = 0
    blobs_skipped: int = 0  # present already, or mounted
    bytes_copied: int = 0


@dataclass(frozen=True)
class CopyProgress:
    event: str  # exists | mounted | copying | copied | manifest
    digest: Digest
    current: int = 0
    total: int = 0


@dataclass(frozen=True)
class CopyResult:
    digest: Digest
    media_type: str
    stats: CopyStats


ProgressFn = Callable[[CopyProgress], Any]  # may return an awaitable


class _Copier:
    def __init__(self, src: RegistryClient, src_repo: str, dst: RegistryClient, dst_repo: str,
                 progress: ProgressFn | None, concurrency: int):
        self.src, self.src_repo, self.dst, self.dst_repo = src, src_repo, dst, dst_repo
        self.same_registry = src.base_url == dst.base_url
        self._progress = progress
        self.stats = CopyStats()
        self._limit = asyncio.Semaphore(concurrency)
        self._done: dict[Digest, asyncio.Task] = {}  # one transfer per blob, however often referenced

    async def progress(self, p: CopyProgress) -> None:
        if self._progress is not None:
            r = self._progress(p)
            if inspect.isawaitable(r):
                await r

    async def blob(self, d: Descriptor) -> None:
        if d.urls and d.media_type == mt.DOCKER_FOREIGN_LAYER:
            return  # foreign layers stay where their URLs point, as docker copies them
        task = self._done.get(d.digest)
        if task is None:
            task = self._done[d.digest] = asyncio.ensure_future(self._blob(d))
        await task

    async def _blob(self, d: Descriptor) -> None:
        async with self._limit:
            if await self.dst.blob_exists(self.dst_repo, d.digest) is not None:
                self.stats.blobs_skipped += 1
                await self.progress(CopyProgress("exists", d.digest, d.size, d.size))
                return
            sent = 0

            async def chunks():
                nonlocal sent
                async with self.src.open_blob(self.src_repo, d.digest) as stream:
                    async for chunk in stream:
                        sent += len(chunk)
                        await self.progress(CopyProgress("copying", d.digest, sent, d.size))
                        yield chunk

            mount = self.src_repo if self.same_registry else None
            how = await self.dst.push_blob(self.dst_repo, d.digest, d.size, chunks, mount_from=mount,
                                           check_exists=False)
            if how == "uploaded":
                self.stats.blobs_copied += 1
                self.stats.bytes_copied += d.size
                await self.progress(CopyProgress("copied", d.digest, d.size, d.size))
            else:
                self.stats.blobs_skipped += 1
                await self.progress(CopyProgress("mounted", d.digest, d.size, d.size))

    async def manifest(self, ref: str, dst_ref: str | None, platform: tuple[str, str] | None) -> CopyResult:
        fetched = await self.src.get_manifest(self.src_repo, ref)
        media_type, value = parse_manifest(fetched.body, fetched.media_type)
        if isinstance(value, Index):
            if platform is not None:
                chosen = select_platform(value, *platform)
                return await self.manifest(str(chosen.digest), dst_ref, None)
            # Each child under its digest first, then the index that names them.
            await _gather(self.manifest(str(c.digest), None, None) for c in value.manifests)
        else:
            assert isinstance(value, Manifest)
            await _gather(self.blob(c) for c in value.children())
        await self.dst.put_manifest(self.dst_repo, dst_ref or str(fetched.digest), fetched.body, media_type)
        await self.progress(CopyProgress("manifest", fetched.digest, len(fetched.body), len(fetched.body)))
        return CopyResult(fetched.digest, media_type, self.stats)


async def _gather(coros) -> None:
    async with asyncio.TaskGroup() as tg:
        for c in coros:
            tg.create_task(c)


async def copy_image(src_client: RegistryClient, src_repo: str, src_ref: str, dst_client: RegistryClient,
                     dst_repo: str, dst_tag: str | None, *, platform: tuple[str, str] | None = None,
                     progress: ProgressFn | None = None, concurrency: int = 4) -> CopyResult:
    """Copy `src_repo:src_ref` to `dst_repo:dst_tag` (by digest when `dst_tag` is None).

    `platform=("linux", "amd64")` copies only that image of an index; by default an
    index is copied whole, keeping its digest.
    """
    copier = _Copier(src_client, src_repo, dst_client, dst_repo, progress, concurrency)
    return await copier.manifest(src_ref, dst_tag, platform)
