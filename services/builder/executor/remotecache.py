"""Remote build cache: cache records exported to a registry, and imported by builders that lack them.

`--cache-to type=registry,ref=REPO:TAG[,mode=min|max]` pushes an OCI artifact:
an image manifest of `artifactType` ARTIFACT_TYPE whose config (CONFIG_TYPE) is
`{"records": {cache key: record}}` and whose layers are every layer those
records name, so the registry keeps them (and its GC sees them as used).
`mode=min` exports the steps of the target's own stage chain, `max` every
step of the build. `type=inline` puts the records of the target's chain in
the image's config instead (INLINE_KEY; BuildKit's inline cache does the same
under its own key), and `--cache-from type=registry,ref=IMAGE` reads either.

Refs name repositories of the stack registry: the records' layers are then
mounted, never copied, when an image uses them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import msgspec

from shared import codec
from shared.csvopts import key_values
from shared.errors import InvalidArgument, NotFound
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from services.builder.executor.cache import CacheRecord
from services.builder.executor.images import LayerRef, Registries, canonical, parse_name, push_image

ARTIFACT_TYPE = "application/vnd.dockyard.buildcache.v1+json"
CONFIG_TYPE = "application/vnd.dockyard.buildcache.config.v1+json"
INLINE_KEY = "dockyard.buildcache.v1"


@dataclass(frozen=True)
class CacheSpec:
    type: str  # registry | inline
    ref: str = ""
    mode: str = "min"


def parse_spec(text: str, flag: str) -> CacheSpec:
    fields = key_values(text, flag)
    kind = fields.pop("type", "registry")
    if kind not in ("registry", "inline"):
        raise InvalidArgument(f"{flag} {text!r}: type must be registry or inline")
    ref = fields.pop("ref", "")
    mode = fields.pop("mode", "min")
    if mode not in ("min", "max"):
        raise InvalidArgument(f"{flag} {text!r}: mode must be min or max")
    fields.pop("image-manifest", None)  # BuildKit's layout switch: this format is always a manifest
    fields.pop("oci-mediatypes", None)
    if fields:
        raise InvalidArgument(f"{flag} {text!r}: unknown key {sorted(fields)[0]!r}")
    if kind == "registry" and not ref:
        raise InvalidArgument(f"{flag} {text!r}: type=registry needs ref=")
    if kind == "inline" and flag == "--cache-from":
        raise InvalidArgument("--cache-from reads an inline cache with type=registry,ref=IMAGE")
    if ref and parse_name(ref).domain is not None:
        raise InvalidArgument(f"{flag} {text!r}: the cache ref must be a repository of the stack registry")
    return CacheSpec(kind, ref, mode)


def _encode(records: dict[str, CacheRecord], *, with_index: bool) -> dict:
    """Records as JSON values, without what is local (LRU clock, builder), the scan index if not wanted."""
    out = {}
    for key, rec in records.items():
        rec = msgspec.structs.replace(rec, last_used=0.0, builder="")
        out[key] = codec.to_builtins(rec if with_index else msgspec.structs.replace(rec, index=None))
    return out


def inline_config(records: dict[str, CacheRecord]) -> dict:
    """What an image config carries for `--cache-to type=inline`."""
    return {INLINE_KEY: _encode(records, with_index=False)}


async def export(regs: Registries, spec: CacheSpec, records: dict[str, CacheRecord], blobs) -> None:
    """Push `records` and their layers as a cache artifact to `spec.ref`."""
    ref = parse_name(spec.ref)
    layers = {}
    for rec in records.values():
        if not rec.empty and rec.digest is not None and rec.diff_id is not None:
            layers[str(rec.digest)] = LayerRef(digest=rec.digest, size=rec.size, media_type=rec.media_type,
                                               diff_id=rec.diff_id, repository=rec.repository,
                                               registry=regs.stack_url)
    config = canonical({"records": _encode(records, with_index=True)})
    manifest = canonical({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": str(Digest.from_bytes(config)), "size": len(config)},
        "layers": [layer.descriptor() for layer in layers.values()],
    })
    await push_image(regs, [ref], list(layers.values()), blobs, config, manifest)


async def load(regs: Registries, spec: CacheSpec) -> dict[str, CacheRecord]:
    """The records a cache artifact (or an image with an inline cache) holds; {} if there is none."""
    ref = parse_name(spec.ref)
    client = regs.client(regs.stack_url)
    try:
        got = await client.get_manifest(ref.path, ref.reference, accept=mt.OCI_MANIFEST)
    except NotFound:
        return {}  # no cache there yet: every step a miss, as with BuildKit
    manifest = json.loads(got.body)
    config = json.loads(await regs.config_blob(client, ref.path, Digest(manifest["config"]["digest"])))
    raw = config.get("records") if manifest.get("artifactType") == ARTIFACT_TYPE else config.get(INLINE_KEY)
    if not isinstance(raw, dict):
        return {}
    out = {}
    for key, value in raw.items():
        try:
            rec = codec.decode(json.dumps(value), CacheRecord)
        except InvalidArgument:
            continue  # a record this builder cannot read is a miss, not a failed build
        # The layers are in the artifact's (or image's) repository: look for them there.
        out[key] = msgspec.structs.replace(rec, repository=ref.path)
    return out
