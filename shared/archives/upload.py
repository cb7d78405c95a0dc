"""Loaded images into the stack registry: blobs streamed from the archive, then a manifest per tag."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from shared.archives.load import Archive, LoadImage
from shared.errors import InvalidArgument
from shared.oci.reference import Reference
from shared.progress import ACTIVE, DONE, EXISTS, MOUNTED, OnBlob, counted, nothing
from shared.registry.stackref import local_name

_PARALLEL = 3
_PUSHED = {"exists": EXISTS, "mounted": MOUNTED, "uploaded": DONE}  # RegistryClient.push_blob's answers


@dataclass(frozen=True)
class Loaded:
    name: str  # the stack's reference (path:tag), or "" when the archive named none
    repository: str
    digest: str
    config_digest: str


def stack_names(img: LoadImage) -> list[Reference]:
    """The archive's names as stack references (a foreign one keeps its path, as `pull` does)."""
    out = []
    for n in img.names:
        ref = Reference.parse(n)
        if ref.digest is not None and not ref.tag:
            continue
        out.append(Reference.parse(local_name(ref.with_domain(None))))
    return out


async def _already(client, img: LoadImage, ref: Reference) -> Loaded | None:
    """The name as loaded if it gives this very manifest already: the registry then holds its
    blobs (a manifest is only taken with them), and a re-load costs one HEAD."""
    tag = ref.tag or (None if not img.names else "latest")
    there = await client.head_manifest(ref.path, tag or str(img.digest), img.manifest_type)
    if there is None or there.digest != img.digest:
        return None
    return Loaded(f"{ref.path}:{tag}" if tag else "", ref.path, str(img.digest), str(img.config.digest))


async def upload(client, archive: Archive, images: list[LoadImage], untagged_repo: str = "loaded",
                 progress: OnBlob = nothing) -> list[Loaded]:
    """Push each image's blobs and its manifest (by tag, or by digest to `untagged_repo`);
    a name that gives the image already is left as it is. `progress` hears of each blob
    of an image's first name to push as it goes (as there, when every name is)."""
    out = []
    sem = asyncio.Semaphore(_PARALLEL)
    for img in images:
        refs = stack_names(img) or [Reference(domain=None, path=untagged_repo)]
        there = {r: x for r in refs if (x := await _already(client, img, r)) is not None}
        out.extend(there.values())
        refs = [r for r in refs if r not in there]
        if not refs:
            for b in [img.config, *img.layers]:
                progress(b.digest.short, EXISTS, b.size, b.size)
            continue
        first = refs[0].path

        async def push(b, repo: str, mount_from: str | None, progress: OnBlob = nothing) -> None:
            async with sem:
                item = b.digest.short
                source = counted(archive.chunks(b.member), lambda n: progress(item, ACTIVE, n, b.size))
                how = await client.push_blob(repo, b.digest, b.size, source, mount_from=mount_from)
                progress(item, _PUSHED.get(how, DONE), b.size, b.size)

        await asyncio.gather(*(push(b, first, None, progress) for b in [img.config, *img.layers]))
        for ref in refs:
            if ref.path != first:
                await asyncio.gather(*(push(b, ref.path, first) for b in [img.config, *img.layers]))
            tag = ref.tag or (None if not img.names else "latest")
            digest = await client.put_manifest(ref.path, tag or str(img.digest), img.manifest, img.manifest_type)
            if digest != img.digest:
                raise InvalidArgument(f"the registry stored {digest}, not {img.digest}")
            out.append(Loaded(f"{ref.path}:{tag}" if tag else "", ref.path, str(digest), str(img.config.digest)))
    return out
