"""The S3 storage driver: blob bytes in a bucket that a fleet of layer-stores shares.

Layout under an optional key prefix (same shape as the filesystem driver):
  blobs/<alg>/<2 hex>/<hex>   the blob; metadata `committed-at` (unix seconds, exact repr)
  fence/<alg>/<2 hex>/<hex>   the GC fence record of that blob (JSON, see FenceRecord)
  ingest/<id>/...             upload sessions (see s3_ingest)

The GC fence without locks: every `touch` and `delete` of a digest is a compare-and-swap
of its fence object (PUT If-Match the ETag read, or If-None-Match: * when there is
none), so of a racing touch and delete exactly one swap lands. A delete first swaps in
a `deleting_since` mark and only then removes the blob; a touch that finds the mark
reports the blob gone. Either the touch wins (the delete re-reads, sees the touch and
refuses) or the delete wins (the touch finds no blob): the same contract as the
filesystem driver's flock, across processes and hosts. A fence record names the
blob's `committed_at`, so one left by an earlier incarnation of the digest (deleted,
then committed again) is ignored rather than ever deleted, which would need a
conditional DELETE that not every S3 implementation has.

Consistency assumptions: the store is strongly read-after-write consistent for
objects and listings (AWS S3 since 2020, MinIO, Ceph RGW) and honours conditional
writes: If-None-Match: * on PutObject and CompleteMultipartUpload, If-Match on
PutObject (AWS since 2024; MinIO; SeaweedFS). A delete that stalls longer than DELETE_LEASE
between its mark and its DELETE gives up; a mark older than that (its process died) is
taken over by the next touch or delete. Clocks of the fleet are assumed to agree to
well within the GC's grace period, as with any shared fence time.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from pathlib import Path

import msgspec

from services.layer_store.storage.base import Usage
from services.layer_store.storage.s3_client import (InvalidRange, ObjectHead, PreconditionFailed,
                                                    S3Client, S3Config)
from services.layer_store.storage.s3_ingest import (INFO, INGEST, SEG, Area, LiveSession, Segment,
                                                    SessionView, assemble, create_session,
                                                    hash_segments, list_view, read_info,
                                                    remove_session, unknown_upload)
from shared.errors import Conflict, InvalidArgument, NotFound, Unavailable
from shared.layer_store_client import RangeNotSatisfiable
from shared.messages.layer_store import BlobInfo, UploadInfo
from shared.oci.digest import Digest, Hasher

_HEX_LEN = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[0-9a-f]+$")
_CURSOR = re.compile(r"^([a-z0-9]+):([0-9a-f]*)$")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
COMMITTED_AT = "committed-at"
# Longer than any single S3 request of a delete should take; a mark older than this
# belongs to a delete that died and may be taken over.
DELETE_LEASE = 30.0
CAS_ATTEMPTS = 8
STAT_CONCURRENCY = 32
READ_CHUNK = 1 << 20
IDLE_SESSION_SECONDS = 600.0


def blob_unknown(digest: str) -> NotFound:
    return NotFound(f"blob {digest} not found", detail_code="BLOB_UNKNOWN")


class FenceRecord(msgspec.Struct, kw_only=True):
    committed_at: str  # the incarnation of the blob this record is about
    touched_at: float = 0.0
    deleting_since: float = 0.0

    def deleting(self, now: float) -> bool:
        return self.deleting_since > 0 and now - self.deleting_since < DELETE_LEASE


class _Blob:
    """What one HEAD of the blob and one GET of its fence said."""

    def __init__(self, digest: Digest, head: ObjectHead, fence: FenceRecord | None, fence_etag: str | None):
        self.digest = digest
        self.head = head
        self.committed_raw = head.metadata.get(COMMITTED_AT, "")
        try:
            self.committed_at = float(self.committed_raw)
        except ValueError:
            self.committed_at = head.last_modified  # put there by another tool
        self.fence_etag = fence_etag
        # a record of an earlier incarnation of this digest counts as none
        self.fence = fence if fence is not None and fence.committed_at == self.committed_raw else None

    def info(self, touched_at: float | None = None) -> BlobInfo:
        touched = touched_at if touched_at is not None else (self.fence.touched_at if self.fence else 0.0)
        return BlobInfo(digest=self.digest, size=self.head.size, committed_at=self.committed_at,
                        touched_at=touched)


class S3Driver:
    name = "s3"

    def __init__(self, config: S3Config, *, prefix: str = "", connections: int = 64):
        self.config = config
        self._client = S3Client(config, connections=connections)
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._area = Area(self._client, f"{self._prefix}{INGEST}")
        self._sessions: dict[str, LiveSession] = {}
        self._upload_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._digest_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "S3Driver":
        """DOCKYARD_S3_{ENDPOINT,BUCKET} (required), _ACCESS_KEY and _SECRET_KEY (else
        botocore's credential chain), _REGION, _ADDRESSING (path|virtual), _PREFIX."""
        env = os.environ if environ is None else environ

        def get(name: str, default: str | None = None) -> str:
            value = env.get(f"DOCKYARD_S3_{name}", default)
            if not value:
                raise InvalidArgument(f"DOCKYARD_S3_{name} must be set for the s3 storage driver")
            return value

        config = S3Config(endpoint=get("ENDPOINT"), bucket=get("BUCKET"),
                          access_key=env.get("DOCKYARD_S3_ACCESS_KEY", ""),
                          secret_key=env.get("DOCKYARD_S3_SECRET_KEY", ""),
                          region=get("REGION", "us-east-1"), addressing=get("ADDRESSING", "path"))
        return cls(config, prefix=env.get("DOCKYARD_S3_PREFIX", ""))

    @property
    def root(self) -> str:
        """Where the blobs live, for logs."""
        return f"s3://{self.config.bucket}/{self._prefix} at {self.config.endpoint}"

    @property
    def client(self) -> S3Client:
        return self._client

    # ---- keys ---------------------------------------------------------------------

    def _blob_key(self, digest: Digest) -> str:
        return f"{self._prefix}blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    def _fence_key(self, digest: Digest) -> str:
        return f"{self._prefix}fence/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    def _digest_of(self, key: str) -> Digest | None:
        """The digest a blob key names; None for anything else found under blobs/."""
        parts = key[len(self._prefix):].split("/")
        if len(parts) != 4 or parts[0] != "blobs":
            return None
        _, alg, two, hex_ = parts
        if _HEX_LEN.get(alg) != len(hex_) or two != hex_[:2] or not _HEX.match(hex_):
            return None
        return Digest(f"{alg}:{hex_}")

    def local_path(self, digest: Digest) -> Path | None:
        return None

    # ---- blobs and the fence ----------------------------------------------------------

    def _digest_lock(self, digest: Digest) -> asyncio.Lock:
        # Only spares this process's tasks needless CAS retries; the CAS is the fence.
        lock = self._digest_locks.get(digest)
        if lock is None:
            lock = self._digest_locks[digest] = asyncio.Lock()
        return lock

    async def _load(self, digest: Digest) -> _Blob | None:
        head, fence = await asyncio.gather(self._client.head_object(self._blob_key(digest)),
                                           self._client.get_object(self._fence_key(digest)))
        if head is None:
            return None
        record = etag = None
        if fence is not None:
            etag = fence[1]
            try:
                record = msgspec.json.decode(fence[0], type=FenceRecord)
            except (msgspec.DecodeError, msgspec.ValidationError):
                record = None  # unreadable: swapped over like an absent one (its ETag still guards)
        return _Blob(digest, head, record, etag)

    async def _swap_fence(self, blob: _Blob, record: FenceRecord) -> None:
        """Replace the fence object only if it is still the one `blob` read."""
        body = msgspec.json.encode(record)
        if blob.fence_etag is None:
            await self._client.put_object(self._fence_key(blob.digest), body, if_none_match=True)
        else:
            await self._client.put_object(self._fence_key(blob.digest), body, if_match=blob.fence_etag)

    async def stat(self, digest: Digest) -> BlobInfo:
        blob = await self._load(digest)
        if blob is None or (blob.fence is not None and blob.fence.deleting(time.time())):
            raise blob_unknown(digest)
        return blob.info()

    async def touch(self, digest: Digest) -> BlobInfo:
        async with self._digest_lock(digest):
            for _ in range(CAS_ATTEMPTS):
                blob = await self._load(digest)
                now = time.time()
                if blob is None or (blob.fence is not None and blob.fence.deleting(now)):
                    raise blob_unknown(digest)  # gone, or a delete holds it: the delete wins
                try:
                    await self._swap_fence(blob, FenceRecord(committed_at=blob.committed_raw, touched_at=now))
                except PreconditionFailed:
                    continue  # a touch or delete elsewhere swapped first: look again
                return blob.info(touched_at=now)
        raise Conflict(f"blob {digest}: fence keeps changing under concurrent touches")

    async def delete(self, digest: Digest, *, unless_touched_since: float | None = None,
                     dry_run: bool = False) -> BlobInfo:
        async with self._digest_lock(digest):
            for _ in range(CAS_ATTEMPTS):
                blob = await self._load(digest)
                now = time.time()
                if blob is None or (blob.fence is not None and blob.fence.deleting(now)):
                    raise blob_unknown(digest)
                info = blob.info()
                last_use = max(info.committed_at, info.touched_at)
                if unless_touched_since is not None and last_use >= unless_touched_since:
                    raise Conflict(f"blob {digest} was committed or touched at {last_use:.3f}, "
                                   f"not before {unless_touched_since:.3f}", detail_code="BLOB_IN_USE")
                if dry_run:
                    return info
                marked = time.monotonic()
                mark = FenceRecord(committed_at=blob.committed_raw, touched_at=info.touched_at,
                                   deleting_since=now)
                try:
                    await self._swap_fence(blob, mark)
                except PreconditionFailed:
                    continue  # touched (or deleted) meanwhile: decide again on what it is now
                if time.monotonic() - marked > DELETE_LEASE / 2:
                    # Our mark may be taken over soon: deleting now could lose a touch.
                    raise Unavailable(f"blob {digest}: the store is too slow to delete safely")
                # The mark stays behind as a tombstone; a later commit of the digest is a
                # new incarnation that ignores it.
                await self._client.delete_object(self._blob_key(digest))
                return info
        raise Conflict(f"blob {digest}: fence keeps changing under concurrent touches")

    async def read(self, digest: Digest, offset: int = 0,
                   length: int | None = None) -> AsyncIterator[bytes]:
        key = self._blob_key(digest)
        if length is not None and length <= 0:
            if await self._client.head_object(key) is None:
                raise blob_unknown(digest)
            return
        byte_range = None
        if offset > 0 or length is not None:
            byte_range = f"bytes={offset}-{offset + length - 1 if length is not None else ''}"
        try:
            async for chunk in self._client.read_object(key, byte_range, READ_CHUNK):
                yield chunk
        except NotFound as e:
            raise blob_unknown(digest) from e
        except InvalidRange as e:
            # past the end: nothing to read (as a file read at EOF), if the blob exists
            if await self._client.head_object(key) is None:
                raise blob_unknown(digest) from e

    async def _blob_keys(self, after: str = "") -> AsyncIterator[tuple[Digest, int]]:
        """Blobs in digest order (key order is digest order), strictly after the cursor."""
        start = ""
        m = _CURSOR.match(after)
        if m:
            start = f"{self._prefix}blobs/{m[1]}/{m[2][:2]}/{m[2]}"
        async for obj in self._client.list_objects(f"{self._prefix}blobs/", start):
            digest = self._digest_of(obj.key)
            if digest is not None and digest > after:
                yield digest, obj.size

    async def list(self, after: str = "", limit: int = 1000) -> tuple[list[BlobInfo], str]:
        if limit < 1:
            raise InvalidArgument(f"limit must be positive, not {limit}")
        listed: list[Digest] = []
        async for digest, _ in self._blob_keys(after):
            listed.append(digest)
            if len(listed) > limit:
                break
        more = len(listed) > limit
        page = listed[:limit]
        sem = asyncio.Semaphore(STAT_CONCURRENCY)

        async def stat(d: Digest) -> BlobInfo | None:
            async with sem:
                try:
                    return await self.stat(d)
                except NotFound:
                    return None  # deleted while we listed

        infos = [i for i in await asyncio.gather(*(stat(d) for d in page)) if i is not None]
        return infos, (page[-1] if more else "")

    async def usage(self) -> Usage:
        blobs = total = 0
        async for _, size in self._blob_keys():
            blobs += 1
            total += size
        uploads = upload_bytes = 0
        for view in (await self._ingest_views()).values():
            if view.has_info:
                uploads += 1
                upload_bytes += view.size
        return Usage(blobs=blobs, bytes=total, uploads=uploads, upload_bytes=upload_bytes)

    # ---- upload sessions ------------------------------------------------------------

    def _check_id(self, upload_id: str) -> None:
        if not _UPLOAD_ID.match(upload_id):  # never let an id name keys outside its session
            raise unknown_upload(upload_id)

    def _upload_lock(self, upload_id: str) -> asyncio.Lock:
        lock = self._upload_locks.get(upload_id)
        if lock is None:
            lock = self._upload_locks[upload_id] = asyncio.Lock()
        return lock

    async def _session(self, upload_id: str) -> LiveSession:
        """The session as listed now; the cached hash only if it covers exactly that
        (caller holds the upload lock). Another process may have appended meanwhile."""
        self._check_id(upload_id)
        view = await list_view(self._area, upload_id)
        if not view.has_info:
            self._sessions.pop(upload_id, None)
            raise unknown_upload(upload_id)
        live = self._sessions.get(upload_id)
        if live is None or not live.matches(view):
            info = live.info if live is not None else await read_info(self._area, upload_id)
            live = await LiveSession.resume(self._area, info, view)
            self._sessions[upload_id] = live
        live.last_used = time.monotonic()
        return live

    def _close_idle_sessions(self) -> None:
        cutoff = time.monotonic() - IDLE_SESSION_SECONDS
        for upload_id, live in list(self._sessions.items()):
            if live.last_used < cutoff and not self._upload_lock(upload_id).locked():
                del self._sessions[upload_id]

    async def start_upload(self, algorithm: str = "sha256",
                           labels: dict[str, str] | None = None) -> UploadInfo:
        hasher = Hasher(algorithm)  # refuses an unknown algorithm before anything is stored
        self._close_idle_sessions()
        upload_id = uuid.uuid4().hex
        # uuid4: 122 random bits, so the id is also an unguessable capability
        info = await create_session(self._area, upload_id, algorithm, labels)
        self._sessions[upload_id] = LiveSession(info, hasher, [])
        return UploadInfo(id=upload_id, size=0, started_at=info.started_at, updated_at=info.started_at,
                          labels=info.labels)

    async def append(self, upload_id: str, chunks: AsyncIterable[bytes], *,
                     offset: int | None = None) -> int:
        async with self._upload_lock(upload_id):
            live = await self._session(upload_id)
            if offset is not None and offset != live.size:
                raise RangeNotSatisfiable(
                    f"upload {upload_id} has {live.size} bytes; a chunk at {offset} is out of order",
                    size=live.size)
            await live.pump(self._area, chunks)
            return live.size

    async def upload_status(self, upload_id: str) -> UploadInfo:
        self._check_id(upload_id)
        view = await list_view(self._area, upload_id)
        if not view.has_info:
            raise unknown_upload(upload_id)
        info = await read_info(self._area, upload_id)
        updated = max([info.started_at] + [s.last_modified for s in view.segments])
        return UploadInfo(id=upload_id, size=view.size, started_at=info.started_at, updated_at=updated,
                          labels=info.labels)

    async def commit(self, upload_id: str, digest: Digest, size: int | None = None,
                     chunks: AsyncIterable[bytes] | None = None) -> BlobInfo:
        async with self._upload_lock(upload_id):
            live = await self._session(upload_id)
            if chunks is not None:
                await live.pump(self._area, chunks)
            if size is not None and size != live.size:
                raise InvalidArgument(f"upload {upload_id} has {live.size} bytes, not {size}",
                                      detail_code="SIZE_INVALID")
            if digest.algorithm == live.hasher.algorithm:
                actual = live.hasher.digest()
            else:  # a digest of another algorithm than hashed while appending: re-read
                other = Hasher(digest.algorithm)
                await hash_segments(self._area, upload_id, live.segments, other)
                actual = other.digest()
            if actual != digest:
                raise InvalidArgument(f"upload {upload_id} has digest {actual}, not {digest}",
                                      detail_code="DIGEST_INVALID")
            info = await self._place(digest, live)
            self._sessions.pop(upload_id, None)
            await remove_session(self._area, upload_id, live.segments)
            return info

    async def _place(self, digest: Digest, live: LiveSession) -> BlobInfo:
        """Make the verified session the blob, or count a commit of a stored one as a use."""
        key = self._blob_key(digest)
        for _ in range(CAS_ATTEMPTS):
            if await self._client.head_object(key) is not None:
                try:
                    return await self.touch(digest)  # never rewritten; a re-commit is a use
                except NotFound:
                    continue  # deleted just now: place ours
            # Stamped at the request that makes it visible, not when the bytes arrived:
            # a GC sweep fenced before this commit must not take it.
            committed = time.time()
            try:
                await assemble(self._area, live.id, live.segments, key, {COMMITTED_AT: repr(committed)})
            except PreconditionFailed:
                continue  # a concurrent commit of the same digest placed it first
            return BlobInfo(digest=digest, size=live.size, committed_at=committed, touched_at=0.0)
        raise Conflict(f"blob {digest} keeps being deleted and stored concurrently")

    async def abort(self, upload_id: str) -> None:
        self._check_id(upload_id)
        async with self._upload_lock(upload_id):
            self._sessions.pop(upload_id, None)
            view = await list_view(self._area, upload_id)
            if not view.has_info:
                raise unknown_upload(upload_id)
            await remove_session(self._area, upload_id, view.segments)

    async def _ingest_views(self) -> dict[str, SessionView]:
        """Every session's listing, from one walk of the ingest area."""
        root = self._area.root
        views: dict[str, SessionView] = {}
        async for obj in self._client.list_objects(root):
            upload_id, _, name = obj.key[len(root):].partition("/")
            if not _UPLOAD_ID.match(upload_id):
                continue
            view = views.setdefault(upload_id, SessionView(False, []))
            if name == INFO:
                views[upload_id] = view._replace(has_info=True)
            elif name.startswith(SEG):
                view.segments.append(Segment(int(name[len(SEG):]), obj.size, obj.etag, obj.last_modified))
        return views

    async def list_uploads(self) -> list[UploadInfo]:
        out = []
        for upload_id in sorted(u for u, v in (await self._ingest_views()).items() if v.has_info):
            try:
                out.append(await self.upload_status(upload_id))
            except NotFound:
                continue  # committed or aborted while we looked
        return out

    async def close(self) -> None:
        self._sessions.clear()
        await self._client.close()
