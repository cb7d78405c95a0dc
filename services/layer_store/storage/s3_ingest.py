"""Upload sessions of the S3 driver: `ingest/<id>/info` plus immutable segment objects.

A session's bytes are a run of ordinary objects `ingest/<id>/seg/<offset>`, each written
once (If-None-Match: *) by an append; the listing of the prefix is the session's truth
(its size, and the ETags that pin every segment). Plain objects rather than an open
S3 multipart upload, because a multipart upload's parts cannot be read back (a
session resumed by another process must be re-hashed), parts must be >= 5 MiB (an
OCI client may PATCH any chunk size), and an open upload is invisible to a listing.

At commit the verified segments are assembled into the blob by a multipart upload:
segments of >= 5 MiB are copied server-side (UploadPartCopy, pinned by ETag), runs of
smaller ones are fetched and uploaded as one part. The blob appears only when
CompleteMultipartUpload succeeds, conditionally (If-None-Match: *) so that an existing
blob is never rewritten.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Mapping, Sequence
from typing import NamedTuple

import msgspec

from services.layer_store.storage.s3_client import PreconditionFailed, S3Client
from shared.errors import Conflict, InvalidArgument, NotFound, Unavailable
from shared.oci.digest import Hasher

INGEST = "ingest/"
INFO = "info"
SEG = "seg/"
# An append is cut into objects of this size: the memory one append holds (twice,
# with one segment in flight), and 10,000 multipart parts of it bound a blob (50 GiB).
# S3's smallest part, so that every full segment is copied server-side at commit.
SEGMENT_BYTES = 5 << 20
MIN_PART = 5 << 20  # S3's smallest multipart part, except the last
MAX_PARTS = 10_000
ASSEMBLY_CONCURRENCY = 4


def unknown_upload(upload_id: str) -> NotFound:
    return NotFound(f"upload {upload_id} not found", detail_code="BLOB_UPLOAD_UNKNOWN")


class SessionInfo(msgspec.Struct, kw_only=True):
    id: str
    algorithm: str = "sha256"
    started_at: float = 0.0
    labels: dict[str, str] = {}


class Segment(NamedTuple):
    offset: int
    size: int
    etag: str
    last_modified: float = 0.0


class Area(NamedTuple):
    """The ingest area: the client and the key under which sessions live (`<prefix>ingest/`)."""
    client: S3Client
    root: str = INGEST

    def session_prefix(self, upload_id: str) -> str:
        return f"{self.root}{upload_id}/"

    def segment_key(self, upload_id: str, offset: int) -> str:
        return f"{self.root}{upload_id}/{SEG}{offset:020d}"


class SessionView(NamedTuple):
    """One listing of a session's prefix."""
    has_info: bool
    segments: list[Segment]

    @property
    def size(self) -> int:
        return self.segments[-1].offset + self.segments[-1].size if self.segments else 0


async def list_view(area: Area, upload_id: str) -> SessionView:
    prefix = area.session_prefix(upload_id)
    has_info = False
    segments: list[Segment] = []
    async for obj in area.client.list_objects(prefix):
        name = obj.key[len(prefix):]
        if name == INFO:
            has_info = True
        elif name.startswith(SEG) and name[len(SEG):].isdigit():
            segments.append(Segment(int(name[len(SEG):]), obj.size, obj.etag, obj.last_modified))
    end = 0
    for seg in segments:  # appends are sequential, so the segments tile the session
        if seg.offset != end:
            raise Conflict(f"upload {upload_id} has a gap at {end}: written by a concurrent writer?")
        end += seg.size
    return SessionView(has_info, segments)


async def read_info(area: Area, upload_id: str) -> SessionInfo:
    got = await area.client.get_object(area.session_prefix(upload_id) + INFO)
    if got is None:
        raise unknown_upload(upload_id)
    try:
        return msgspec.json.decode(got[0], type=SessionInfo)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise unknown_upload(upload_id) from e  # foreign or torn: not a session of ours


async def create_session(area: Area, upload_id: str, algorithm: str,
                         labels: Mapping[str, str] | None = None) -> SessionInfo:
    info = SessionInfo(id=upload_id, algorithm=algorithm, started_at=time.time(),
                       labels=dict(labels or {}))
    await area.client.put_object(area.session_prefix(upload_id) + INFO, msgspec.json.encode(info),
                                 if_none_match=True)
    return info


class LiveSession:
    """A session as this process knows it: the running hash of exactly its segments."""

    def __init__(self, info: SessionInfo, hasher: Hasher, segments: list[Segment]):
        self.info = info
        self.hasher = hasher
        self.segments = segments
        self.last_used = time.monotonic()
        self.stale = False  # a write's outcome is unknown: re-list and re-hash before use

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def size(self) -> int:
        return self.hasher.size

    def matches(self, view: SessionView) -> bool:
        return not self.stale and [(s.offset, s.etag) for s in self.segments] == \
            [(s.offset, s.etag) for s in view.segments]

    @classmethod
    async def resume(cls, area: Area, info: SessionInfo, view: SessionView) -> "LiveSession":
        """Re-hash a session from its segments (made by another process or instance)."""
        hasher = Hasher(info.algorithm)
        await hash_segments(area, info.id, view.segments, hasher)
        return cls(info, hasher, list(view.segments))

    async def pump(self, area: Area, chunks: AsyncIterable[bytes]) -> None:
        """Append the chunks as segments, one in flight while the next one fills.

        A body that breaks off keeps every byte that arrived (the client resumes from
        the size reported); a cancelled append waits for the segment in flight, so
        the session stays known, and drops what was still buffered."""
        # Chunks are copied once, into the segment they belong to; a full segment is
        # handed to its write as it is. Two segments are alive at most: the one filling
        # and the one in flight.
        buf, n = bytearray(SEGMENT_BYTES), 0
        pending: asyncio.Task | None = None
        body_error: Exception | None = None
        try:
            it = aiter(chunks)
            while True:
                try:
                    chunk = await anext(it)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    body_error = e
                    break
                if not chunk:
                    continue
                view = memoryview(chunk)
                while view:
                    take = min(len(view), SEGMENT_BYTES - n)
                    buf[n:n + take] = view[:take]
                    n, view = n + take, view[take:]
                    if n == SEGMENT_BYTES:
                        pending = await self._next_write(area, pending, buf)
                        buf, n = bytearray(SEGMENT_BYTES), 0
            if n:
                del buf[n:]
                pending = await self._next_write(area, pending, buf)
            if pending is not None:
                task, pending = pending, None
                await task
        finally:
            if pending is not None:
                await _settle(pending)
        if body_error is not None:
            raise body_error

    async def _next_write(self, area: Area, pending: asyncio.Task | None,
                          data: bytearray) -> asyncio.Task:
        if pending is not None:
            await pending
        # The previous write has landed (or raised): the next segment starts at the size.
        return asyncio.create_task(self._write_segment(area, self.size, data))

    async def _write_segment(self, area: Area, offset: int, data: bytearray) -> None:
        try:
            etag = await area.client.put_object(area.segment_key(self.id, offset), data,
                                                if_none_match=True)
        except PreconditionFailed as e:
            self.stale = True
            raise Conflict(f"upload {self.id} was appended to at {offset} by another writer") from e
        except BaseException:
            self.stale = True  # it may or may not have landed
            raise
        # Hashed only once stored: the hash always covers exactly the segments listed.
        await asyncio.to_thread(self.hasher.update, data)
        self.segments.append(Segment(offset, len(data), etag))


async def _settle(task: asyncio.Task) -> None:
    """Wait for a segment write to end even if we are cancelled meanwhile."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
        except Exception:
            break
    if cancelled:
        raise asyncio.CancelledError()


async def hash_segments(area: Area, upload_id: str, segments: Sequence[Segment],
                        hasher: Hasher) -> None:
    for seg in segments:
        data = await _fetch(area, upload_id, seg)
        await asyncio.to_thread(hasher.update, data)


async def _fetch(area: Area, upload_id: str, seg: Segment) -> bytes:
    got = await area.client.get_object(area.segment_key(upload_id, seg.offset), if_match=seg.etag)
    if got is None or len(got[0]) != seg.size:
        raise Conflict(f"upload {upload_id} changed at {seg.offset} while being read")
    return got[0]


def plan_parts(segments: Sequence[Segment]) -> list[list[Segment]]:
    """Group segments into multipart parts: a lone big segment is copied server-side,
    a group of several is fetched and uploaded; every part but the last >= MIN_PART."""
    parts: list[list[Segment]] = []
    group: list[Segment] = []
    size = 0
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if not group and (seg.size >= MIN_PART or last):
            parts.append([seg])
            continue
        group.append(seg)
        size += seg.size
        if size >= MIN_PART or last:
            parts.append(group)
            group, size = [], 0
    if len(parts) > MAX_PARTS:
        raise InvalidArgument(f"blob of {len(segments)} segments exceeds {MAX_PARTS} parts")
    return parts


async def assemble(area: Area, upload_id: str, segments: Sequence[Segment], key: str,
                   metadata: Mapping[str, str]) -> None:
    """Make `key` from the segments; PreconditionFailed when it exists already."""
    client = area.client
    if not segments:
        await client.put_object(key, b"", metadata=metadata, if_none_match=True)
        return
    mpu = await client.create_multipart_upload(key, metadata)
    sem = asyncio.Semaphore(ASSEMBLY_CONCURRENCY)

    async def part(number: int, group: list[Segment]) -> str:
        async with sem:
            if len(group) == 1 and (group[0].size >= MIN_PART or number == len(plan)):
                seg = group[0]
                return await client.upload_part_copy(key, mpu, number,
                                                     area.segment_key(upload_id, seg.offset), seg.etag)
            data = b"".join([await _fetch(area, upload_id, s) for s in group])
            return await client.upload_part(key, mpu, number, data)

    plan = plan_parts(segments)
    try:
        etags = await asyncio.gather(*(part(n, g) for n, g in enumerate(plan, 1)))
        await client.complete_multipart_upload(key, mpu, etags, if_none_match=True)
    except BaseException:
        # No orphaned upload left billing parts (a bucket lifecycle rule that aborts
        # incomplete multipart uploads covers a process that dies right here).
        try:
            await asyncio.shield(client.abort_multipart_upload(key, mpu))
        except (Unavailable, Conflict, NotFound):
            pass
        raise


async def remove_session(area: Area, upload_id: str, segments: Sequence[Segment]) -> None:
    """Delete the segments, then the info object (a session without info is not listed)."""
    await asyncio.gather(*(area.client.delete_object(area.segment_key(upload_id, s.offset))
                           for s in segments))
    await area.client.delete_object(area.session_prefix(upload_id) + INFO)
