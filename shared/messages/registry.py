"""registry-gateway requests, replies and events (subjects in shared.subjects)."""

from __future__ import annotations

import msgspec

from shared.oci.digest import Digest


class ImagePushed(msgspec.Struct, kw_only=True):
    """Event `dockyard.events.image.pushed`: a manifest was stored (tag empty for by-digest)."""

    repository: str
    digest: Digest
    media_type: str
    tag: str = ""
    size: int = 0
    pushed_at: float = 0.0


class ImageDeleted(msgspec.Struct, kw_only=True):
    """Event `dockyard.events.image.deleted`: a manifest or a tag was removed."""

    repository: str
    digest: Digest
    tag: str = ""
