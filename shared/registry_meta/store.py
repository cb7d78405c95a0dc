"""RegistryMeta: the registry's repositories, tags, manifest links, referrers and blob links.

Everything lives in JetStream KV buckets written with compare-and-set, so any number of
registry-gateway replicas (and the garbage-collector) on one NATS act as one registry.

Keys are built with `shared.bus.kv_key`, repository first so that a prefix watch lists one
repository's tags, manifests or referrers without reading the others.

Tag/untagged-delete protocol (no lock server): whoever points a tag at a manifest puts the
tag and then bumps the manifest link with a CAS update; whoever deletes an untagged manifest
reads the link's revision, checks that no tag points at it, and deletes with `last=revision`.
Either the bump sees the link gone (the tag is rolled back) or the delete sees a newer
revision (it is refused): never a tag pointing at a deleted manifest.

The same bump protects the other references a push creates: a manifest push writes its own
link and then bumps the link of every child manifest an index lists (a child gone by then:
the new link is withdrawn and the push fails) and of its subject (gone: allowed, OCI lets
an artifact's subject dangle).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client as NATS

from shared import subjects
from shared.bus import TypedKV, kv_key, kv_key_parts
from shared.errors import AlreadyExists, Conflict, NotFound
from shared.oci.digest import Digest
from shared.registry_meta.records import (BlobLink, ManifestLink, Referrer, RepositoryRecord,
                                          TagRecord, UploadSession)

# Abandoned upload sessions are the layer-store's to expire; their owner records follow.
UPLOAD_TTL_SECONDS = 7 * 24 * 3600


def _page(names: list[str], last: str, n: int | None) -> list[str]:
    names = sorted(names)
    if last:
        names = [x for x in names if x > last]
    return names if n is None else names[:n]


BUCKETS = (subjects.KV_REPOSITORIES, subjects.KV_TAGS, subjects.KV_MANIFESTS, subjects.KV_REFERRERS,
           subjects.KV_BLOB_LINKS, subjects.KV_UPLOADS)


class RegistryMeta:
    """Typed access to the registry metadata; the gateway and the GC share it."""

    def __init__(self, repos: TypedKV, tags: TypedKV, manifests: TypedKV, referrers: TypedKV,
                 blobs: TypedKV, uploads: TypedKV):
        self._repos = repos
        self._tags = tags
        self._manifests = manifests
        self._referrers = referrers
        self._blobs = blobs
        self._uploads = uploads

    @staticmethod
    def bucket_names(suffix: str = "") -> list[str]:
        return [b + suffix for b in BUCKETS]

    @classmethod
    async def open(cls, nc: NATS, *, suffix: str = "") -> "RegistryMeta":
        """Bind (creating when absent) the buckets; `suffix` isolates a test's registry."""
        return cls(
            await TypedKV.open(nc, subjects.KV_REPOSITORIES + suffix, RepositoryRecord),
            await TypedKV.open(nc, subjects.KV_TAGS + suffix, TagRecord),
            await TypedKV.open(nc, subjects.KV_MANIFESTS + suffix, ManifestLink),
            await TypedKV.open(nc, subjects.KV_REFERRERS + suffix, Referrer),
            await TypedKV.open(nc, subjects.KV_BLOB_LINKS + suffix, BlobLink),
            await TypedKV.open(nc, subjects.KV_UPLOADS + suffix, UploadSession, ttl=UPLOAD_TTL_SECONDS),
        )

    # ---- repositories ----------------------------------------------------------------

    async def ensure_repository(self, name: str) -> None:
        try:
            await self._repos.create(kv_key(name), RepositoryRecord(name=name, created_at=time.time()))
        except AlreadyExists:
            pass

    async def repository_exists(self, name: str) -> bool:
        return await self._repos.get(kv_key(name)) is not None

    async def list_repositories(self, *, last: str = "", n: int | None = None) -> list[str]:
        names = [kv_key_parts(k)[0] for k in await self._repos.keys()]
        return _page(names, last, n)

    async def delete_repository(self, name: str) -> None:
        """Forget a repository record (its tags and links are removed by their own calls)."""
        await self._repos.delete(kv_key(name))

    # ---- tags ------------------------------------------------------------------------

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        got = await self._tags.get(kv_key(repo, tag))
        return got[0].digest if got else None

    async def list_tags(self, repo: str, *, last: str = "", n: int | None = None) -> list[str]:
        # The keys alone: reading each tag's record too made a tag list of a busy repository
        # (50 tags) take ~1 s at p50 under load, 4x distribution's.
        return _page([kv_key_parts(k)[1] for k in await self._tags.keys(kv_key(repo) + ".")], last, n)

    async def tags(self, repo: str) -> dict[str, Digest]:
        """Every tag of `repo` and the digest it points at."""
        out = {}
        for key, rec, _ in await self._tags.items(kv_key(repo) + "."):
            out[kv_key_parts(key)[1]] = rec.digest
        return out

    async def tag_manifest(self, repo: str, tag: str, digest: Digest) -> Digest | None:
        """Point `tag` at a manifest the repository holds; returns the digest it moved from."""
        key = kv_key(repo, tag)
        previous = await self.get_tag(repo, tag)
        rev = await self._tags.put(key, TagRecord(digest=digest, updated_at=time.time()))
        if not await self.bump_manifest(repo, digest):
            try:
                await self._tags.delete(key, last=rev)
            except Conflict:
                pass  # someone moved the tag meanwhile: theirs stands
            raise NotFound(f"manifest {digest} is not in {repo}", detail_code="MANIFEST_UNKNOWN")
        await self.ensure_repository(repo)
        return previous

    async def bump_manifest(self, repo: str, digest: Digest) -> bool:
        """Give a link a new revision (CAS), so that a GC delete reading the old one is refused.

        False if the link is gone: the caller must then withdraw the reference it just wrote
        (see the module docstring).
        """
        try:
            await self._manifests.mutate(kv_key(repo, digest), self._bumped)
        except _LinkGone:
            return False
        return True

    @staticmethod
    def _bumped(link: ManifestLink | None) -> ManifestLink:
        if link is None:
            raise _LinkGone()
        return link  # the CAS update itself gives the link a new revision

    async def delete_tag(self, repo: str, tag: str, *, expect: Digest | None = None) -> Digest | None:
        """Remove a tag (only if it still points at `expect`, when given); its old digest or None."""
        key = kv_key(repo, tag)
        got = await self._tags.get(key)
        if got is None:
            return None
        rec, rev = got
        if expect is not None and rec.digest != expect:
            return None
        try:
            await self._tags.delete(key, last=rev)
        except Conflict:
            return None  # moved concurrently: the newer tag stands
        return rec.digest

    # ---- manifest links ----------------------------------------------------------------

    async def get_manifest(self, repo: str, digest: Digest) -> ManifestLink | None:
        got = await self._manifests.get(kv_key(repo, digest))
        return got[0] if got else None

    async def get_manifest_rev(self, repo: str, digest: Digest) -> tuple[ManifestLink, int] | None:
        return await self._manifests.get(kv_key(repo, digest))

    async def put_manifest(self, link: ManifestLink) -> int:
        rev = await self._manifests.put(kv_key(link.repository, link.digest), link)
        await self.ensure_repository(link.repository)
        return rev

    async def withdraw_manifest(self, repo: str, digest: Digest, revision: int) -> bool:
        """Undo a failed push's `put_manifest`: delete the link only if it is still at `revision`.

        False (and the link stays) if anyone wrote or bumped it since: a re-push of the same
        manifest is judged by its own push, and a tag or index pointed at it owns it now.
        """
        try:
            await self._manifests.delete(kv_key(repo, digest), last=revision)
        except Conflict:
            return False
        return True

    async def manifests(self, repo: str | None = None) -> AsyncIterator[ManifestLink]:
        """Every manifest link (of one repository, or all): what the GC marks from."""
        prefix = kv_key(repo) + "." if repo is not None else ""
        for key in await self._manifests.keys(prefix):
            got = await self._manifests.get(key)
            if got is not None:
                yield got[0]

    async def watch(self) -> tuple[Any, Any]:
        """nats-py watchers over the repository records and the manifest links (every current
        entry, an end-of-initial-values None, then each change): for views kept up to date."""
        return await self._repos.kv.watchall(), await self._manifests.kv.watchall()

    async def delete_manifest(self, repo: str, digest: Digest, *,
                              revision: int | None = None) -> ManifestLink | None:
        """Remove a manifest link, the tags pointing at it and its referrer entry.

        With `revision` (what the GC read), the delete is refused (Conflict) if the link
        changed since, e.g. a tag was pointed at it. Returns the removed link or None.
        """
        got = await self._manifests.get(kv_key(repo, digest))
        if got is None:
            return None
        link, rev = got
        if revision is not None and revision != rev:
            raise Conflict(f"manifest {digest} in {repo} changed concurrently")
        await self._manifests.delete(kv_key(repo, digest), last=revision if revision is not None else rev)
        for tag, d in (await self.tags(repo)).items():
            if d == digest:
                await self.delete_tag(repo, tag, expect=digest)
        if link.subject is not None:
            await self.remove_referrer(repo, link.subject, digest)
        return link

    async def delete_untagged_manifest(self, repo: str, digest: Digest) -> ManifestLink | None:
        """The GC's delete: only while no tag points at the manifest (see the module docstring)."""
        got = await self._manifests.get(kv_key(repo, digest))
        if got is None:
            return None
        if digest in (await self.tags(repo)).values():
            raise Conflict(f"manifest {digest} in {repo} is tagged")
        return await self.delete_manifest(repo, digest, revision=got[1])

    # ---- referrers -------------------------------------------------------------------

    async def add_referrer(self, repo: str, subject: Digest, referrer: Referrer) -> None:
        await self._referrers.put(kv_key(repo, subject, referrer.digest), referrer)

    async def remove_referrer(self, repo: str, subject: Digest, digest: Digest) -> None:
        if await self._referrers.get(kv_key(repo, subject, digest)) is not None:
            await self._referrers.delete(kv_key(repo, subject, digest))

    async def referrers(self, repo: str, subject: Digest) -> list[Referrer]:
        items = await self._referrers.items(kv_key(repo, subject) + ".")
        return sorted((r for _, r, _ in items), key=lambda r: r.digest)

    # ---- blob links --------------------------------------------------------------------

    async def link_blob(self, repo: str, digest: Digest, size: int) -> None:
        key = kv_key(digest, repo)
        if await self._blobs.get(key) is None:
            await self._blobs.put(key, BlobLink(size=size, linked_at=time.time()))
        await self.ensure_repository(repo)

    async def blob_link(self, repo: str, digest: Digest) -> BlobLink | None:
        got = await self._blobs.get(kv_key(digest, repo))
        return got[0] if got else None

    async def unlink_blob(self, repo: str, digest: Digest) -> bool:
        key = kv_key(digest, repo)
        if await self._blobs.get(key) is None:
            return False
        await self._blobs.delete(key)
        return True

    async def repositories_with_blob(self, digest: Digest) -> list[str]:
        return sorted(kv_key_parts(k)[1] for k in await self._blobs.keys(kv_key(digest) + "."))

    # ---- upload sessions ---------------------------------------------------------------

    async def begin_upload(self, upload_id: str, repo: str, base_url: str = "") -> None:
        await self._uploads.create(kv_key(upload_id), UploadSession(
            repository=repo, started_at=time.time(), base_url=base_url))

    async def upload_session(self, upload_id: str) -> UploadSession | None:
        got = await self._uploads.get(kv_key(upload_id))
        return got[0] if got else None

    async def upload_repository(self, upload_id: str) -> str | None:
        rec = await self.upload_session(upload_id)
        return rec.repository if rec else None

    async def end_upload(self, upload_id: str) -> None:
        if await self._uploads.get(kv_key(upload_id)) is not None:
            await self._uploads.delete(kv_key(upload_id))


class _LinkGone(Exception):
    """The manifest link vanished while a tag was being pointed at it."""
