"""The build cache: step keys and their records in JetStream KV, shared by every replica.

key(step) = sha256(parent key, the step's text after substitution, digests of
every file it reads, the layer compression). The parent of a stage's first
step is its base: an image manifest digest, a stage's last key, or scratch.
Secret ids enter the key through the step's text; secret bytes never do.

A record holds the layer (digest, size, media type, diff_id, or none for a step
that changed nothing), the layer's index for the post-build scan, and the
last time a build used it, which the garbage-collector's LRU reads.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import msgspec

from shared import subjects
from shared.bus import TypedKV, kv_key, kv_key_parts
from shared.errors import Conflict, DockyardError
from shared.oci.digest import Digest
from services.builder.executor.scan import LayerIndex

_TOUCH_AFTER = 10.0  # seconds: refresh last_used (the prune's LRU clock) at most this often per record
VERSION = "v1"


class CacheRecord(msgspec.Struct, kw_only=True):
    empty: bool = False
    digest: Digest | None = None
    size: int = 0
    media_type: str = ""
    diff_id: Digest | None = None
    created: str = ""
    index: LayerIndex | None = None
    repository: str = ""  # a repository of the stack registry the blob was pushed to
    last_used: float = 0.0
    builder: str = ""


@dataclass(frozen=True)
class Entry:
    """One record as read from the KV: its KV key, its cache key, and the revision read."""

    kv_key: str
    key: str
    rec: CacheRecord
    rev: int

    @property
    def item(self) -> str:
        what = f"{self.rec.digest} {self.rec.size}" if self.rec.digest else "(no layer)"
        return f"{self.key[:16]} {what}"


def chain(parent: str, text: str, contents: str = "", compression: str = "gzip") -> str:
    h = hashlib.sha256()
    for part in (VERSION, parent, text, contents, compression):
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def base_key(identity: str) -> str:
    return chain("", "FROM " + identity)


class BuildCache:
    """Lookups and stores of cache records; errors of the KV never fail a build."""

    def __init__(self, kv: TypedKV | None, builder_id: str = ""):
        self.kv = kv
        self.builder_id = builder_id

    @classmethod
    async def open(cls, nc, builder_id: str = "") -> "BuildCache":
        kv = await TypedKV.open(nc, subjects.KV_BUILD_CACHE, CacheRecord,
                                description="builder layer cache (key: step chain digest)")
        return cls(kv, builder_id)

    @staticmethod
    def kv_key(key: str) -> str:
        return kv_key(VERSION, key)

    async def get(self, key: str) -> CacheRecord | None:
        if self.kv is None:
            return None
        try:
            got = await self.kv.get(self.kv_key(key))
        except DockyardError:
            return None
        if got is None:
            return None
        rec, rev = got
        now = time.time()
        if now - rec.last_used > _TOUCH_AFTER:
            try:
                await self.kv.update(self.kv_key(key), msgspec.structs.replace(rec, last_used=now), last=rev)
            except DockyardError:
                pass  # another builder touched it first: as good
        return rec

    async def put(self, key: str, rec: CacheRecord) -> None:
        if self.kv is None:
            return
        rec = msgspec.structs.replace(rec, last_used=time.time(), builder=self.builder_id)
        try:
            await self.kv.put(self.kv_key(key), rec)
        except DockyardError:
            pass

    # -- pruning ----------------------------------------------------------------------

    async def entries(self) -> list[Entry]:
        """Every record with the revision read (Unavailable if the KV cannot be read)."""
        if self.kv is None:
            return []
        return [Entry(kv_key=k, key=kv_key_parts(k)[-1], rec=rec, rev=rev)
                for k, rec, rev in await self.kv.items(kv_key(VERSION) + ".")]

    async def remove(self, entry: Entry) -> bool:
        """Delete a record unless it changed since it was read (a build just touched it)."""
        assert self.kv is not None
        try:
            await self.kv.delete(entry.kv_key, last=entry.rev)
        except Conflict:
            return False
        return True

    async def restore(self, entry: Entry) -> None:
        """Put back a removed record that a build leased meanwhile (unless one was rewritten)."""
        assert self.kv is not None
        try:
            await self.kv.create(entry.kv_key, entry.rec)
        except DockyardError:
            pass  # a build wrote it again already
