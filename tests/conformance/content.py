"""The objects the conformance workflows push, built the way the OCI suite builds its own.

One config (a random author makes its digest unique) and one manifest per workflow,
all sharing one gzipped layer; a 42-byte blob for the streamed upload and another cut
in two chunks; the referrers set: two artifacts whose config media type is the
artifact type, two with `artifactType` and an empty-JSON config, an index with a
subject, and one artifact whose subject is never pushed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import secrets
import tarfile
from dataclasses import dataclass

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
ARTIFACT_A = "application/vnd.dyconf.peanut.butter"
ARTIFACT_B = "application/vnd.dyconf.strawberry.jam"
ARTIFACT_INDEX = "application/vnd.dyconf.food.stand"
ANNOTATION = "org.opencontainers.conformance.test"
INVALID_REFERENCE = ".INVALID_MANIFEST_NAME"  # neither a tag (leading dot) nor a digest
WORKFLOWS = 5  # pull, push, discovery, management, and the referrers' subject
# The error codes of the spec's table, plus the legacy ones it says clients may meet.
SPEC_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED",
    "DENIED", "UNSUPPORTED", "TAG_INVALID", "MANIFEST_UNVERIFIED"})


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict:
    # The suite's descriptors all carry a field no spec defines (null unless set): a
    # registry must ignore what it does not know.
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), "newUnspecifiedField": None}


def config_descriptor(config: bytes) -> dict:
    """An image config's descriptor with its bytes embedded (`data`), as the suite pushes it."""
    return {**descriptor(OCI_CONFIG, config), "data": base64.b64encode(config).decode(),
            "newUnspecifiedField": base64.b64encode(b"hello world").decode()}


def _json(obj: dict) -> bytes:
    # Indented, as the suite sends it: the registry must keep these exact bytes.
    return json.dumps(obj, indent="\t").encode()


def _layer() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        text = b"you bothered to find out what was in here.\n"
        info = tarfile.TarInfo("test.txt")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return gzip.compress(raw.getvalue(), mtime=0)


@dataclass(frozen=True)
class Chunked:
    """A blob and its two chunks with their inclusive `Content-Range` values."""

    blob: bytes

    @property
    def first(self) -> bytes:
        return self.blob[:len(self.blob) // 2 + 1]

    @property
    def second(self) -> bytes:
        return self.blob[len(self.first):]

    @property
    def first_range(self) -> str:
        return f"0-{len(self.first) - 1}"

    @property
    def second_range(self) -> str:
        return f"{len(self.first)}-{len(self.blob) - 1}"


class Content:
    """Everything one run pushes; fresh random bytes each time, so no run sees another's."""

    def __init__(self) -> None:
        self.layer = _layer()
        self.configs = [_json({"architecture": "amd64", "os": "linux", "author": secrets.token_hex(8),
                               "rootfs": {"type": "layers", "diff_ids": []}}) for _ in range(WORKFLOWS)]
        self.manifests = [self._image(config, [descriptor(OCI_LAYER_GZIP, self.layer)])
                          for config in self.configs]
        # No layers, no mediaType field: the suite's "manifest with no layers".
        self.empty_layer_manifest = _json({"schemaVersion": 2, "config": config_descriptor(self.configs[1]),
                                           "layers": []})
        self.blob_a = os.urandom(42)
        self.chunked = Chunked(os.urandom(42))
        self.dummy_digest = digest(b"hello world")  # never pushed
        self.empty_json = b"{}"
        self.ref_blob_a = b"dyconf peanut butter " + secrets.token_bytes(8)
        self.ref_blob_b = b"dyconf strawberry jam " + secrets.token_bytes(8)
        subject = descriptor(OCI_MANIFEST, self.manifests[4])
        missing_subject = descriptor(OCI_MANIFEST, self.manifests[3])
        empty = descriptor(OCI_EMPTY, self.empty_json)
        self.ref_a_config = self._artifact(descriptor(ARTIFACT_A, self.ref_blob_a), [empty], subject,
                                           "test config a")
        self.ref_b_config = self._artifact(descriptor(ARTIFACT_B, self.ref_blob_b), [empty], subject,
                                           "test config b")
        self.ref_a_layer = self._artifact(empty, [descriptor(ARTIFACT_A, self.ref_blob_a)], subject,
                                          "test layer a", artifact_type=ARTIFACT_A)
        self.ref_b_layer = self._artifact(empty, [descriptor(ARTIFACT_B, self.ref_blob_b)], subject,
                                          "test layer b", artifact_type=ARTIFACT_B)
        self.ref_c_layer = self._artifact(empty, [descriptor(ARTIFACT_B, self.ref_blob_b)], missing_subject,
                                          None, artifact_type=ARTIFACT_B)
        self.ref_index = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": ARTIFACT_INDEX,
                                "manifests": [descriptor(OCI_MANIFEST, self.ref_a_config),
                                              descriptor(OCI_MANIFEST, self.ref_a_layer)],
                                "subject": subject, "annotations": {ANNOTATION: "test index"}})

    @staticmethod
    def _image(config: bytes, layers: list[dict]) -> bytes:
        return _json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_descriptor(config),
                      "layers": layers})

    @staticmethod
    def _artifact(config: dict, layers: list[dict], subject: dict, annotation: str | None, *,
                  artifact_type: str | None = None) -> bytes:
        m: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        if artifact_type:
            m["artifactType"] = artifact_type
        m.update(config=config, layers=layers, subject=subject)
        if annotation is not None:
            m["annotations"] = {ANNOTATION: annotation}
        return _json(m)

    def referrers_of_subject(self) -> dict[str, tuple[str, str]]:
        """digest -> (artifactType, annotation) of the five referrers of manifests[4]."""
        return {digest(self.ref_a_config): (ARTIFACT_A, "test config a"),
                digest(self.ref_b_config): (ARTIFACT_B, "test config b"),
                digest(self.ref_a_layer): (ARTIFACT_A, "test layer a"),
                digest(self.ref_b_layer): (ARTIFACT_B, "test layer b"),
                digest(self.ref_index): (ARTIFACT_INDEX, "test index")}
