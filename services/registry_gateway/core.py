"""The registry's rules over metadata and blob bytes, shared by the HTTP API and the bus verbs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec

from shared import subjects
from shared.bus import BusClient
from shared.layer_store_client import LayerStoreClient
from shared.errors import DockyardError, InvalidArgument, NotFound
from shared.messages.registry import ImageDeleted, ImagePushed
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from shared.oci.manifest import AnyManifest, Descriptor, Index, Manifest, parse_manifest
from shared.oci.reference import parse_tag
from shared.registry_meta import ManifestLink, Referrer, RegistryMeta

# Layers that live elsewhere (Windows base layers): a manifest may name them without the bytes.
_NONDISTRIBUTABLE = frozenset({
    mt.DOCKER_FOREIGN_LAYER,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})


def is_digest(reference: str) -> bool:
    return ":" in reference


def manifest_unknown(repo: str, reference: str) -> NotFound:
    return NotFound(f"manifest {reference} not found in {repo}", detail_code="MANIFEST_UNKNOWN")


class Registry:
    """Repositories of manifests over the layer-store; publishes image events when it has a bus."""

    def __init__(self, meta: RegistryMeta, store: LayerStoreClient, nc: Any | None = None):
        self.meta = meta
        self.store = store
        self._bus = BusClient(nc) if nc is not None else None

    # ---- reading -------------------------------------------------------------------

    async def resolve(self, repo: str, reference: str) -> ManifestLink:
        """The manifest link a tag or digest names in `repo`; MANIFEST_UNKNOWN if none."""
        if is_digest(reference):
            digest = Digest(reference)
        else:
            found = await self.meta.get_tag(repo, parse_tag(reference))
            if found is None:
                raise manifest_unknown(repo, reference)
            digest = found
        link = await self.meta.get_manifest(repo, digest)
        if link is None:
            raise manifest_unknown(repo, reference)
        return link

    async def manifest_body(self, link: ManifestLink) -> bytes:
        try:
            async with self.store.open_blob(link.digest) as resp:
                return await resp.read()
        except NotFound as e:
            raise NotFound(f"manifest {link.digest} bytes are missing", detail_code="MANIFEST_UNKNOWN") from e

    # ---- writing -------------------------------------------------------------------

    async def put_manifest(self, repo: str, reference: str, body: bytes,
                           content_type: str | None, pushed_by: str = "") -> ManifestLink:
        media_type, manifest = parse_manifest(body, content_type)
        if is_digest(reference):
            digest, tag = Digest(reference), ""
            if Digest.from_bytes(body, digest.algorithm) != digest:
                raise InvalidArgument(f"manifest body does not match digest {digest}",
                                      detail_code="DIGEST_INVALID")
        else:
            tag = parse_tag(reference)
            digest = Digest.from_bytes(body)
        link = await self._verified_link(repo, digest, media_type, len(body), manifest)
        link = msgspec.structs.replace(link, pushed_by=pushed_by)
        await self._store_small_blob(digest, body)
        await self._commit_link(link)
        if tag:
            await self.meta.tag_manifest(repo, tag, digest)
        if manifest.subject is not None:
            await self.meta.add_referrer(repo, manifest.subject.digest, Referrer(
                media_type=media_type, digest=digest, size=len(body),
                artifact_type=link.artifact_type, annotations=manifest.annotations))
        await self._publish(subjects.EVENT_IMAGE_PUSHED, ImagePushed(
            repository=repo, digest=digest, media_type=media_type, tag=tag, size=len(body),
            pushed_at=link.pushed_at))
        return link

    async def _verified_link(self, repo: str, digest: Digest, media_type: str, size: int,
                             manifest: AnyManifest) -> ManifestLink:
        """Check every blob or child manifest exists (touching it: the GC fence); the new link."""
        if isinstance(manifest, Manifest):
            blobs = [d for d in manifest.children() if not (d.media_type in _NONDISTRIBUTABLE and d.urls)]
            await asyncio.gather(*(self._touch_blob(repo, d) for d in blobs))
            artifact_type = manifest.artifact_type or (
                manifest.config.media_type if manifest.subject is not None else None)
            return ManifestLink(
                repository=repo, digest=digest, media_type=media_type, size=size, pushed_at=time.time(),
                blobs=list(dict.fromkeys(d.digest for d in blobs)), config=manifest.config.digest,
                subject=manifest.subject.digest if manifest.subject else None,
                artifact_type=artifact_type, annotations=manifest.annotations,
                total_size=size + sum(d.size for d in manifest.children()))
        assert isinstance(manifest, Index)
        children = await asyncio.gather(*(self._touch_child(repo, d) for d in manifest.manifests))
        return ManifestLink(
            repository=repo, digest=digest, media_type=media_type, size=size, pushed_at=time.time(),
            manifests=list(dict.fromkeys(d.digest for d in manifest.manifests)),
            subject=manifest.subject.digest if manifest.subject else None,
            artifact_type=manifest.artifact_type, annotations=manifest.annotations,
            total_size=size + sum(c.total_size for c in children))

    async def _touch_blob(self, repo: str, desc: Descriptor) -> None:
        unknown = NotFound(f"blob {desc.digest} is not in {repo}", detail_code="MANIFEST_BLOB_UNKNOWN")
        if await self.meta.blob_link(repo, desc.digest) is None:
            raise unknown
        try:
            info = await self.store.stat(desc.digest, touch=True)
        except NotFound as e:
            raise unknown from e
        if info.size != desc.size:
            raise InvalidArgument(f"blob {desc.digest} has {info.size} bytes, the manifest says "
                                  f"{desc.size}", detail_code="MANIFEST_INVALID")

    async def _touch_child(self, repo: str, desc: Descriptor) -> ManifestLink:
        child = await self.meta.get_manifest(repo, desc.digest)
        unknown = NotFound(f"manifest {desc.digest} is not in {repo}", detail_code="MANIFEST_BLOB_UNKNOWN")
        if child is None:
            raise unknown
        try:
            await self.store.stat(desc.digest, touch=True)
        except NotFound as e:
            raise unknown from e
        return child

    async def _commit_link(self, link: ManifestLink) -> None:
        """Write a manifest link and then hold what it references against a concurrent GC.

        The checks before the write (`_verified_link`) prove the blobs and child manifests
        existed; these after it make that still true once the link is visible, whatever a
        garbage-collector run decided from a snapshot that predates the link:
        - each child manifest's link is bumped (CAS): the untagged job deletes a link only
          at the revision it read, so it is refused, or it won and the bump finds no link;
        - the subject's link is bumped the same way, so an untagged subject that a new
          artifact keeps is not deleted under it; a subject already gone is left dangling,
          as OCI allows (a referrer may be pushed before its subject);
        - every blob the link makes the GC mark (layers, config, child manifests' bytes,
          its own bytes) is touched again. The layer-store serialises touch and delete of a
          digest: this touch is later than any sweep's T0 that missed the link, so either
          it lands first and that sweep's `delete(unless_touched_since=T0 - grace)` is
          refused, or the delete landed first and the touch finds no blob.
        A child or blob found gone withdraws the link (CAS, at the revision written here)
        and fails the push with MANIFEST_BLOB_UNKNOWN: never a link to deleted bytes.
        """
        repo = link.repository
        rev = await self.meta.put_manifest(link)
        try:
            for child, alive in zip(link.manifests, await asyncio.gather(
                    *(self.meta.bump_manifest(repo, d) for d in link.manifests))):
                if not alive:
                    raise NotFound(f"manifest {child} was removed from {repo} during the push",
                                   detail_code="MANIFEST_BLOB_UNKNOWN")
            if link.subject is not None:
                await self.meta.bump_manifest(repo, link.subject)
            await self._retouch(link)
        except Exception:
            # Any failure (a layer-store outage too) leaves the link unprotected: withdraw it.
            # If the gateway dies right here instead, the first touch still holds the blobs
            # for the GC's grace period, which was the whole protection before this one.
            with contextlib.suppress(DockyardError):  # the push's own error says more
                await self.meta.withdraw_manifest(repo, link.digest, rev)
            raise

    async def _retouch(self, link: ManifestLink) -> None:
        """Touch (not just stat) every blob the link makes the GC mark; NotFound if one is gone."""
        digests = list(dict.fromkeys([*link.blobs, *link.manifests, link.digest]))
        results = await asyncio.gather(*(self.store.stat(d, touch=True) for d in digests),
                                       return_exceptions=True)
        for d, r in zip(digests, results):
            if isinstance(r, NotFound):
                raise NotFound(f"blob {d} of manifest {link.digest} was removed during the push",
                               detail_code="MANIFEST_BLOB_UNKNOWN") from r
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def _store_small_blob(self, digest: Digest, body: bytes) -> None:
        """Keep a manifest's bytes as a blob (touching it if it is there already)."""
        try:
            await self.store.stat(digest, touch=True)
            return
        except NotFound:
            pass
        await self.store.put_blob(body, digest, len(body))

    async def copy_link(self, link: ManifestLink, repo: str) -> ManifestLink:
        """Make a manifest of one repository (with its blobs and child manifests) one of `repo`.

        Blobs are touched first (the GC fence), as a manifest push would.
        """
        for child in link.manifests:
            found = await self.meta.get_manifest(link.repository, child)
            if found is None:
                raise manifest_unknown(link.repository, child)
            await self.copy_link(found, repo)
        for digest in [*link.blobs, link.digest]:
            try:
                info = await self.store.stat(digest, touch=True)
            except NotFound as e:
                raise NotFound(f"blob {digest} of {link.repository}@{link.digest} is gone",
                               detail_code="MANIFEST_BLOB_UNKNOWN") from e
            if digest != link.digest:
                await self.meta.link_blob(repo, digest, info.size)
        copied = msgspec.structs.replace(link, repository=repo, pushed_at=time.time())
        await self._commit_link(copied)
        if link.subject is not None:
            await self.meta.add_referrer(repo, link.subject, Referrer(
                media_type=link.media_type, digest=link.digest, size=link.size,
                artifact_type=link.artifact_type, annotations=link.annotations))
        return copied

    async def tag(self, repo: str, tag: str, digest: Digest) -> Digest | None:
        """Point `tag` at a manifest of `repo`; the digest it pointed at before, if any."""
        link = await self.meta.get_manifest(repo, digest)
        if link is None:
            raise manifest_unknown(repo, digest)
        previous = await self.meta.tag_manifest(repo, parse_tag(tag), digest)
        await self._publish(subjects.EVENT_IMAGE_PUSHED, ImagePushed(
            repository=repo, digest=digest, media_type=link.media_type, tag=tag, size=link.size,
            pushed_at=time.time()))
        return previous

    async def untag(self, repo: str, tag: str) -> Digest:
        digest = await self.meta.delete_tag(repo, parse_tag(tag))
        if digest is None:
            raise manifest_unknown(repo, tag)
        await self._publish(subjects.EVENT_IMAGE_DELETED, ImageDeleted(repository=repo, digest=digest, tag=tag))
        return digest

    async def delete_manifest(self, repo: str, digest: Digest) -> ManifestLink:
        """Remove a manifest and the tags pointing at it; its bytes are the GC's to reclaim."""
        link = await self.meta.delete_manifest(repo, digest)
        if link is None:
            raise manifest_unknown(repo, digest)
        await self._publish(subjects.EVENT_IMAGE_DELETED, ImageDeleted(repository=repo, digest=digest))
        return link

    async def _publish(self, subject: str, event: Any) -> None:
        if self._bus is not None:
            await self._bus.publish(subject, event)


