"""The image workflow verbs on the bus: images, tag, untag, rmi (docker's semantics)."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict

from shared import subjects
from shared.bus import BusService
from shared.errors import Conflict, DockyardError, InvalidArgument, NotFound
from shared.messages.registry import (ImagesReply, ImagesRequest, ImageSummary, RmiReply, RmiRequest,
                                      TagReply, TagRequest, UntagRequest)
from shared.oci.digest import Digest
from shared.oci.manifest import parse_image_config
from shared.oci.reference import Reference
from shared.registry_meta import ManifestLink
from services.registry_gateway.core import Registry

_ID_PREFIX_RE = re.compile(r"^(?:(sha256|sha512):)?([0-9a-f]{1,128})$")
_CONFIG_FETCH_LIMIT = 8


def image_id(link: ManifestLink) -> Digest:
    """docker's IMAGE ID: the config digest of an image, the digest of an index."""
    return link.config or link.digest


class ImageVerbs:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.meta = registry.meta
        self._created: dict[Digest, str] = {}  # config digest -> created (content addressed)
        self._fetch = asyncio.Semaphore(_CONFIG_FETCH_LIMIT)

    def register(self, service: BusService) -> None:
        service.endpoint(subjects.REGISTRY_IMAGES, ImagesRequest, self.images, empty_ok=True)
        service.endpoint(subjects.REGISTRY_TAG, TagRequest, self.tag)
        service.endpoint(subjects.REGISTRY_UNTAG, UntagRequest, self.untag)
        service.endpoint(subjects.REGISTRY_RMI, RmiRequest, self.rmi)

    # ---- images --------------------------------------------------------------------

    async def images(self, req: ImagesRequest) -> ImagesReply:
        repo = Reference.parse(req.repository).path if req.repository else None
        links = [m async for m in self.meta.manifests(repo)]
        tags_by_repo = {r: await self.meta.tags(r) for r in {m.repository for m in links}}
        created = dict(zip([m.config for m in links if m.config],
                           await asyncio.gather(*(self._created_of(m.config) for m in links if m.config))))
        rows = []
        for m in links:
            tags = sorted(t for t, d in tags_by_repo[m.repository].items() if d == m.digest)
            if not tags and not req.all:
                continue
            for tag in tags or [""]:
                rows.append(ImageSummary(
                    repository=m.repository, tag=tag, digest=m.digest, image_id=m.config,
                    media_type=m.media_type, created=created.get(m.config, "") if m.config else "",
                    size=m.total_size, pushed_at=m.pushed_at))
        rows.sort(key=lambda r: (-r.pushed_at, r.repository, r.tag))
        return ImagesReply(images=rows)

    async def _created_of(self, config: Digest) -> str:
        if config not in self._created:
            async with self._fetch:
                try:
                    async with self.registry.store.open_blob(config) as resp:
                        body = await resp.read()
                    self._created[config] = parse_image_config(body).created or ""
                except DockyardError:  # an artifact's config is no image config: no date
                    self._created[config] = ""
        return self._created[config]

    # ---- tag / untag ----------------------------------------------------------------

    async def tag(self, req: TagRequest) -> TagReply:
        source = await self._resolve_one(req.source)
        target = Reference.parse(req.target)
        if target.digest is not None:
            raise InvalidArgument(f"cannot tag with a digest reference {req.target!r}")
        tag = target.tag or "latest"
        if source.repository != target.path:
            await self.registry.copy_link(source, target.path)
        previous = await self.registry.tag(target.path, tag, source.digest)
        return TagReply(repository=target.path, tag=tag, digest=source.digest, previous=previous)

    async def untag(self, req: UntagRequest) -> RmiReply:
        ref = Reference.parse(req.reference)
        if ref.digest is not None:
            raise InvalidArgument(f"untag takes a `repo:tag`, not a digest: {req.reference!r}")
        await self.registry.untag(ref.path, ref.tag or "latest")
        return RmiReply(untagged=[f"{ref.path}:{ref.tag or 'latest'}"])

    # ---- rmi ------------------------------------------------------------------------

    async def rmi(self, req: RmiRequest) -> RmiReply:
        """docker rmi: untag; delete the manifest once no tag is left (by id: all of them)."""
        ref = _as_reference(req.reference)
        if ref is not None:
            try:
                link = await self.registry.resolve(ref.path, ref.reference)
            except NotFound:
                link = None
            if link is not None:
                if ref.digest is not None:
                    return await self._delete(link)
                return await self._untag_then_delete(link, ref.tag or "latest")
        links = await self._by_id_prefix(req.reference)
        repos = sorted({m.repository for m in links})
        tagged = {m.repository for m in links if await self._tags_of(m)}
        if len(tagged) > 1 and not req.force:
            raise Conflict(f"unable to delete {req.reference} (must be forced): the image is referenced "
                           f"in repositories {', '.join(repos)}")
        reply = RmiReply()
        for m in links:
            part = await self._delete(m)
            reply.untagged.extend(part.untagged)
            reply.deleted.extend(part.deleted)
        return reply

    async def _untag_then_delete(self, link: ManifestLink, tag: str) -> RmiReply:
        await self.registry.untag(link.repository, tag)
        reply = RmiReply(untagged=[f"{link.repository}:{tag}"])
        if not await self._tags_of(link) and not await self._is_child(link):
            try:
                await self.registry.delete_manifest(link.repository, link.digest)
                reply.deleted.append(f"{link.repository}@{link.digest}")
            except NotFound:
                pass  # deleted concurrently: the outcome is the same
        return reply

    async def _delete(self, link: ManifestLink) -> RmiReply:
        if await self._is_child(link):
            raise Conflict(f"{link.repository}@{link.digest} is part of an index in the repository")
        tags = await self._tags_of(link)
        await self.registry.delete_manifest(link.repository, link.digest)
        return RmiReply(untagged=[f"{link.repository}:{t}" for t in tags],
                        deleted=[f"{link.repository}@{link.digest}"])

    async def _tags_of(self, link: ManifestLink) -> list[str]:
        return sorted(t for t, d in (await self.meta.tags(link.repository)).items() if d == link.digest)

    async def _is_child(self, link: ManifestLink) -> bool:
        async for m in self.meta.manifests(link.repository):
            if link.digest in m.manifests:
                return True
        return False

    # ---- resolving ------------------------------------------------------------------

    async def _resolve_one(self, text: str) -> ManifestLink:
        ref = _as_reference(text)
        if ref is not None:
            try:
                return await self.registry.resolve(ref.path, ref.reference)
            except NotFound:
                pass
        links = await self._by_id_prefix(text)
        return max(links, key=lambda m: m.pushed_at)

    async def _by_id_prefix(self, text: str) -> list[ManifestLink]:
        """Manifests whose image id or manifest digest starts with `text`; one image or Conflict."""
        m = _ID_PREFIX_RE.match(text)
        if not m:
            raise NotFound(f"no such image: {text}")
        algorithm, prefix = m.groups()
        found: dict[Digest, list[ManifestLink]] = defaultdict(list)
        async for link in self.meta.manifests():
            for d in (image_id(link), link.digest):
                if d.hex.startswith(prefix) and (algorithm is None or d.algorithm == algorithm):
                    found[image_id(link)].append(link)
                    break
        if not found:
            raise NotFound(f"no such image: {text}")
        if len(found) > 1:
            raise Conflict(f"{text} is ambiguous: it matches images {', '.join(sorted(d.short for d in found))}")
        return next(iter(found.values()))


def _as_reference(text: str) -> Reference | None:
    try:
        return Reference.parse(text)
    except InvalidArgument:
        return None


def register(service: BusService, registry: Registry) -> ImageVerbs:
    verbs = ImageVerbs(registry)
    verbs.register(service)
    return verbs
