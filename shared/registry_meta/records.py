"""The registry's metadata records as stored in JetStream KV (one Struct per bucket)."""

from __future__ import annotations

import msgspec

from shared.oci.digest import Digest


class RepositoryRecord(msgspec.Struct, kw_only=True):
    name: str
    created_at: float = 0.0


class TagRecord(msgspec.Struct, kw_only=True):
    digest: Digest
    updated_at: float = 0.0


class ManifestLink(msgspec.Struct, kw_only=True):
    """A manifest that a repository holds; its bytes are a blob in the layer-store."""

    repository: str
    digest: Digest
    media_type: str
    size: int
    pushed_at: float = 0.0
    pushed_by: str = ""  # the registry principal that pushed it ("service:<account>" for a service)
    # config and layers of an image manifest: the blobs the GC marks
    blobs: list[Digest] = []
    # manifests an index lists (they are manifest links of the same repository)
    manifests: list[Digest] = []
    config: Digest | None = None  # the image id, for image manifests
    subject: Digest | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    # bytes of the manifest plus its config and layers (an index: its own bytes)
    total_size: int = 0

    @property
    def children(self) -> list[Digest]:
        return [*self.blobs, *self.manifests]


class Referrer(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """One manifest whose `subject` names another, as the referrers API lists it."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None


class BlobLink(msgspec.Struct, kw_only=True):
    """A blob a repository may serve (uploaded or mounted into it), as distribution links layers."""

    size: int = 0
    linked_at: float = 0.0


class UploadSession(msgspec.Struct, kw_only=True):
    """The repository an upload session (the layer-store's upload id) belongs to."""

    repository: str
    started_at: float = 0.0
    # The registry's URL as the client called it: a direct upload's blob Location.
    base_url: str = ""
