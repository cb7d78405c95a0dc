"""registry-gateway requests, replies and events (subjects in shared.subjects)."""

from __future__ import annotations

import msgspec

from shared.oci.digest import Digest


# The gateway's answer to the layer-store's commit hook of a direct (OCI) upload session:
# request shared.messages.layer_store.UploadCommitted, reply UploadTaken.


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


# ---- image workflow verbs (REGISTRY_IMAGES / _TAG / _UNTAG / _RMI) ---------------------

class ImagesRequest(msgspec.Struct, kw_only=True):
    repository: str = ""  # only this repository (empty: all)
    all: bool = False  # also untagged manifests (docker's dangling `<none>` images)


class ImageSummary(msgspec.Struct, kw_only=True):
    repository: str
    tag: str  # "" for an untagged manifest
    digest: Digest  # the manifest's digest
    image_id: Digest | None = None  # the config digest (docker's IMAGE ID); None for an index
    media_type: str = ""
    created: str = ""  # from the image config, RFC 3339
    size: int = 0  # manifest + config + layers (compressed, as stored)
    pushed_at: float = 0.0


class ImagesReply(msgspec.Struct, kw_only=True):
    images: list[ImageSummary]


class TagRequest(msgspec.Struct, kw_only=True):
    source: str  # `repo:tag`, `repo@digest` or an image id prefix
    target: str  # `repo:tag` in the stack registry


class TagReply(msgspec.Struct, kw_only=True):
    repository: str
    tag: str
    digest: Digest
    previous: Digest | None = None  # where the tag pointed before it moved


class UntagRequest(msgspec.Struct, kw_only=True):
    reference: str  # `repo:tag`


class RmiRequest(msgspec.Struct, kw_only=True):
    reference: str  # `repo:tag`, `repo@digest` or a unique image id / digest hex prefix
    force: bool = False  # remove every tag of an image named by id, as `docker rmi -f`


class RmiReply(msgspec.Struct, kw_only=True):
    untagged: list[str] = []  # `repo:tag`
    deleted: list[str] = []  # `repo@digest`
