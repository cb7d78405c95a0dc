"""Choosing one image of a multi-platform index (manifest list)."""

from __future__ import annotations

from shared.errors import NotFound
from shared.oci import mediatypes as mt
from shared.oci.manifest import Descriptor, Index

DEFAULT_OS = "linux"
DEFAULT_ARCHITECTURE = "amd64"
# BuildKit's attestation manifests sit in the index with platform unknown/unknown.
_ATTESTATION = "vnd.docker.reference.type"


def select_platform(index: Index, os: str = DEFAULT_OS, architecture: str = DEFAULT_ARCHITECTURE,
                    variant: str | None = None) -> Descriptor:
    """The index entry for the platform; with no variant asked, the first of any variant."""
    candidates = []
    for d in index.manifests:
        if d.media_type not in mt.MANIFESTS or (d.annotations or {}).get(_ATTESTATION):
            continue
        p = d.platform
        if p is None or p.os != os or p.architecture != architecture:
            continue
        if variant is not None and p.variant not in (variant, None):
            continue
        candidates.append(d)
    if not candidates:
        have = sorted({f"{d.platform.os}/{d.platform.architecture}" for d in index.manifests if d.platform})
        raise NotFound(f"no image for {os}/{architecture} in the index (it has: {', '.join(have) or 'none'})",
                       detail_code="MANIFEST_UNKNOWN")
    # An exact variant match beats an entry that names no variant.
    candidates.sort(key=lambda d: d.platform.variant != variant)
    return candidates[0]
