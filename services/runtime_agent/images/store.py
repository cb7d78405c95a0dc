"""The agent's local image records: what it pulled, under which references, and its config.

Layout under `root`: `<hex of manifest digest>/record.json` (an ImageRecord) and
`config.json` (the image config's exact bytes, so a container can be created with no
registry in reach). A reference names at most one image: pulling a moved tag takes
the reference off the image that had it (that image stays until pruned, like a
dangling docker image).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec

from services.runtime_agent.fsutil import read_record, write_atomic, write_record
from shared.errors import NotFound
from shared.messages.agent import ImageRecord
from shared.oci.digest import Digest
from shared.oci.manifest import ImageConfig, parse_image_config


class ImageStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._images: dict[str, ImageRecord] = {}
        for d in self.root.iterdir():
            rec = read_record(d / "record.json", ImageRecord) if d.is_dir() else None
            if rec is not None and (d / "config.json").exists():
                self._images[rec.digest] = rec
            elif d.is_dir():
                shutil.rmtree(d, ignore_errors=True)  # a pull that crashed half-way

    def list(self) -> list[ImageRecord]:
        return sorted(self._images.values(), key=lambda r: r.pulled_at, reverse=True)

    def by_reference(self, reference: str) -> ImageRecord | None:
        for rec in self._images.values():
            if reference in rec.references:
                return rec
        return None

    def get(self, digest: str) -> ImageRecord:
        try:
            return self._images[digest]
        except KeyError:
            raise NotFound(f"no such image {digest}") from None

    def config(self, digest: str) -> ImageConfig:
        return parse_image_config((self._dir(digest) / "config.json").read_bytes())

    def config_bytes(self, digest: str) -> bytes:
        """The config exactly as pulled (verbs: `commit` builds the new image's on it)."""
        return (self._dir(digest) / "config.json").read_bytes()

    def put(self, record: ImageRecord, config_bytes: bytes) -> ImageRecord:
        """Store (or update) an image; its references leave any other image."""
        for ref in record.references:
            for other in list(self._images.values()):
                if other.digest != record.digest and ref in other.references:
                    self._save(msgspec.structs.replace(
                        other, references=[r for r in other.references if r != ref]))
        d = self._dir(record.digest)
        d.mkdir(exist_ok=True)
        write_atomic(d / "config.json", config_bytes)
        self._save(record)
        return record

    def _save(self, record: ImageRecord) -> None:
        write_record(self._dir(record.digest) / "record.json", record)
        self._images[record.digest] = record

    def remove(self, digest: str) -> ImageRecord:
        rec = self.get(digest)
        d = self._dir(digest)
        (d / "record.json").unlink(missing_ok=True)  # gone for good once this is gone
        shutil.rmtree(d, ignore_errors=True)
        del self._images[digest]
        return rec

    def _dir(self, digest: str) -> Path:
        return self.root / Digest(digest).hex
