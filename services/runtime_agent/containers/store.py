"""Container records on disk: one directory per container, its record written atomically.

    <root>/<id>/record.json   the Container (config, state, network) as `inspect` shows it
    <root>/<id>/json.log      stdout/stderr in docker's json-file format (written by the shim)
    <root>/<id>/bundle/       the OCI bundle (config.json; the rootfs is the overlay mount)

A restarted agent rebuilds its view from these records alone.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

from services.runtime_agent.fsutil import read_record, write_record
from shared.errors import AlreadyExists, InvalidArgument, NotFound
from shared.messages.agent import Container

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
_ID_RE = re.compile(r"^[0-9a-f]{64}$")


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name


class ContainerStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._by_id: dict[str, Container] = {}
        self.on_change: Callable[[str], None] | None = None  # a record was saved or removed (the KV mirror)
        for d in sorted(self.root.iterdir()):
            if not _ID_RE.match(d.name):
                continue
            rec = read_record(d / "record.json", Container)
            if rec is not None and rec.id == d.name:
                self._by_id[rec.id] = rec

    def dir(self, cid: str) -> Path:
        return self.root / cid

    def log_path(self, cid: str) -> Path:
        return self.root / cid / "json.log"

    def bundle(self, cid: str) -> Path:
        return self.root / cid / "bundle"

    def all(self) -> list[Container]:
        return sorted(self._by_id.values(), key=lambda c: c.created, reverse=True)

    def get(self, cid: str) -> Container:
        try:
            return self._by_id[cid]
        except KeyError:
            raise NotFound(f"no such container: {cid}") from None

    def find(self, ref: str) -> Container | None:
        """By full id, exact name, or unique id prefix (docker's order); None if none matches."""
        if ref in self._by_id:
            return self._by_id[ref]
        for c in self._by_id.values():
            if c.name == ref:
                return c
        if len(ref) >= 1 and re.fullmatch(r"[0-9a-f]+", ref):
            hits = [c for c in self._by_id.values() if c.id.startswith(ref)]
            if len(hits) > 1:
                raise InvalidArgument(f"multiple containers found with provided prefix: {ref}")
            if hits:
                return hits[0]
        return None

    def resolve(self, ref: str) -> Container:
        c = self.find(ref)
        if c is None:
            raise NotFound(f"no such container: {ref}")
        return c

    def create(self, container: Container) -> None:
        if any(c.name == container.name for c in self._by_id.values()):
            raise AlreadyExists(f'the container name "/{container.name}" is already in use')
        d = self.dir(container.id)
        d.mkdir()
        self.bundle(container.id).mkdir()
        self.save(container)

    def save(self, container: Container) -> None:
        write_record(self.dir(container.id) / "record.json", container)
        self._by_id[container.id] = container
        if self.on_change is not None:
            self.on_change(container.id)

    def remove(self, cid: str) -> None:
        d = self.dir(cid)
        (d / "record.json").unlink(missing_ok=True)  # the record goes first: no half-removed container
        shutil.rmtree(d, ignore_errors=True)
        self._by_id.pop(cid, None)
        if self.on_change is not None:
            self.on_change(cid)
