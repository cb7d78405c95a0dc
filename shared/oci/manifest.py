"""Immutable image values: descriptors, manifests, indexes, image configs.

`parse_manifest` is the edge: raw bytes from a client or registry become a typed
`Manifest` or `Index` (OCI or Docker schema2) or an InvalidArgument naming the fault.
"""

from __future__ import annotations

from typing import Union

import msgspec

from shared.errors import InvalidArgument
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


class Platform(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, rename={"os_version": "os.version", "os_features": "os.features"}):
    architecture: str
    os: str
    os_version: str | None = None
    os_features: list[str] | None = None
    variant: str | None = None


class Descriptor(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel"):
    media_type: str
    digest: Digest
    size: int
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    data: str | None = None
    platform: Platform | None = None
    artifact_type: str | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("descriptor size must not be negative")


class Manifest(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel"):
    """An image manifest: OCI v1 or Docker schema2 (by `media_type`)."""

    schema_version: int
    media_type: str | None = None
    artifact_type: str | None = None
    config: Descriptor
    layers: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None

    def children(self) -> list[Descriptor]:
        return [self.config, *self.layers]


class Index(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel"):
    """An image index: OCI v1 or Docker manifest list."""

    schema_version: int
    media_type: str | None = None
    artifact_type: str | None = None
    manifests: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None

    def children(self) -> list[Descriptor]:
        return list(self.manifests)


AnyManifest = Union[Manifest, Index]


class _Probe(msgspec.Struct, rename="camel"):
    schema_version: int | None = None
    media_type: str | None = None
    manifests: msgspec.Raw = msgspec.Raw(b"")
    config: msgspec.Raw = msgspec.Raw(b"")


def detect_media_type(body: bytes, content_type: str | None = None) -> str:
    """The manifest's media type from its `mediaType` field, else the Content-Type, else its shape."""
    try:
        probe = msgspec.json.decode(body, type=_Probe)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InvalidArgument(f"manifest is not valid JSON: {e}", detail_code="MANIFEST_INVALID") from e
    if probe.media_type:
        return probe.media_type
    ct = (content_type or "").split(";")[0].strip()
    if ct in mt.MANIFESTS:
        return ct
    return mt.OCI_INDEX if len(probe.manifests) else mt.OCI_MANIFEST


def parse_manifest(body: bytes, content_type: str | None = None) -> tuple[str, AnyManifest]:
    """(media type, typed manifest) of raw manifest bytes; InvalidArgument if malformed."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise InvalidArgument(f"manifest of {len(body)} bytes exceeds {MAX_MANIFEST_BYTES}",
                              detail_code="SIZE_INVALID")
    media_type = detect_media_type(body, content_type)
    ct = (content_type or "").split(";")[0].strip()
    if ct in mt.MANIFESTS and ct != media_type:
        raise InvalidArgument(f"Content-Type {ct} does not match the manifest's mediaType {media_type}",
                              detail_code="MANIFEST_INVALID")
    typ = Index if media_type in mt.INDEXES else Manifest
    if media_type not in mt.MANIFESTS:
        raise InvalidArgument(f"unsupported manifest media type {media_type!r}", detail_code="MANIFEST_INVALID")
    try:
        from shared import codec
        value = codec.decoder(typ).decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InvalidArgument(f"invalid {media_type}: {e}", detail_code="MANIFEST_INVALID") from e
    if value.schema_version != 2:
        raise InvalidArgument(f"unsupported schemaVersion {value.schema_version}", detail_code="MANIFEST_INVALID")
    return media_type, value


# ---- image config ---------------------------------------------------------------------

class HealthConfig(msgspec.Struct, kw_only=True, omit_defaults=True, rename="pascal"):
    test: list[str] | None = None
    interval: int | None = None
    timeout: int | None = None
    start_period: int | None = None
    retries: int | None = None


class ContainerConfig(msgspec.Struct, kw_only=True, omit_defaults=True, rename="pascal"):
    """The `config` object of an image config (docker's field names)."""

    user: str | None = None
    exposed_ports: dict[str, dict] | None = None
    env: list[str] | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    volumes: dict[str, dict] | None = None
    working_dir: str | None = None
    labels: dict[str, str] | None = None
    stop_signal: str | None = None
    shell: list[str] | None = None
    healthcheck: HealthConfig | None = None
    on_build: list[str] | None = None


class RootFS(msgspec.Struct, kw_only=True, rename={"diff_ids": "diff_ids"}):
    type: str = "layers"
    diff_ids: list[Digest] = []


class History(msgspec.Struct, kw_only=True, omit_defaults=True):
    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False


class ImageConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    architecture: str
    os: str
    created: str | None = None
    author: str | None = None
    variant: str | None = None
    config: ContainerConfig = msgspec.field(default_factory=ContainerConfig)
    rootfs: RootFS = msgspec.field(default_factory=RootFS)
    history: list[History] = []


def parse_image_config(body: bytes) -> ImageConfig:
    try:
        from shared import codec
        return codec.decoder(ImageConfig).decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InvalidArgument(f"invalid image config: {e}", detail_code="MANIFEST_INVALID") from e


def encode_canonical(value: msgspec.Struct) -> bytes:
    """Stable JSON for manifests and configs we write (their digest is their identity)."""
    from shared import codec
    return codec.encode(value)
