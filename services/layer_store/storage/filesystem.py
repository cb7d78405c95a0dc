"""The filesystem storage driver: `blobs/<alg>/<2 hex>/<hex>` plus an `ingest/` area.

Blob files are immutable. `committed_at` is the blob file's mtime (set at commit);
`touched_at` is the mtime of a `<hex>.touched` sidecar, created by the first touch.
`touch` and `delete` of one digest hold an exclusive flock on the blob file, and then
check that the path still names the inode they locked: this serialises them across
threads and across processes sharing the directory, without lock files to clean up.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import re
import shutil
import time
import uuid
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from services.layer_store.storage.base import Usage
from services.layer_store.storage.fs_ingest import (DATA, DROP_BEHIND_MIN, IngestSession, StaleSession,
                                                    unknown_upload, upload_info)
from services.layer_store.storage.fsutil import (UncachedReader, fsync_dir, is_no_space,
                                                 makedirs_durable, unlink_missing_ok)
from shared.errors import Conflict, InvalidArgument, NotFound, Unavailable
from shared.layer_store_client import RangeNotSatisfiable
from shared.messages.layer_store import BlobInfo, UploadInfo
from shared.oci.digest import Digest

T = TypeVar("T")

_HEX_LEN = {"sha256": 64, "sha512": 128}
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
TOUCHED = ".touched"
# Appends are handed to the writer thread in batches: big enough that thread hops and
# syscalls are rare, small enough that the socket keeps being read meanwhile. An upload
# holds two at most (one being written, one filling): this is most of what one upload in
# flight costs the process (4 MiB batches made it ~10 MiB, x DOCKYARD_MAX_INFLIGHT).
BATCH_BYTES = 1 << 20
BATCH_BUFFERS = 256
# Blob reads bypass the page cache (fsutil.UncachedReader), one at a time. A read in flight
# holds three chunks (the reader's buffer, the next chunk, the one the socket is sending):
# 8 MiB chunks made that 24 MiB per pull (64 clients pulling: 1.4 GiB). 2 MiB direct reads
# ran at ~650 MB/s (8 MiB: ~900 MB/s) on this project's VMs (dd iflag=direct), still far
# above what a pull over HTTP takes.
READ_CHUNK = 2 << 20
# A live session keeps its data file open and its hash in memory; one left idle this
# long is closed (and re-hashed from disk should its client ever come back).
IDLE_SESSION_SECONDS = 600.0


def blob_unknown(digest: str) -> NotFound:
    return NotFound(f"blob {digest} not found", detail_code="BLOB_UNKNOWN")


class FilesystemDriver:
    name = "filesystem"

    def __init__(self, root: Path | str, *, io_threads: int = 8):
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._ingest = self.root / "ingest"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._ingest.mkdir(parents=True, exist_ok=True)
        # Two pools: a writer thread waits on a hashing future, so hashing must never
        # queue behind writers in the same pool.
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="dyls-io")
        self._hash = ThreadPoolExecutor(4, thread_name_prefix="dyls-hash")
        self._flush = ThreadPoolExecutor(1, thread_name_prefix="dyls-flush")
        self._sessions: dict[str, IngestSession] = {}
        self._upload_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._io, functools.partial(fn, *args, **kw))

    # ---- blobs --------------------------------------------------------------------

    def _path(self, digest: Digest) -> Path:
        return self._blobs / digest.algorithm / digest.hex[:2] / digest.hex

    def local_path(self, digest: Digest) -> Path | None:
        return self._path(digest)

    def _info(self, digest: Digest, st: os.stat_result) -> BlobInfo:
        try:
            touched = os.stat(self._path(digest).with_name(digest.hex + TOUCHED)).st_mtime_ns / 1e9
        except FileNotFoundError:
            touched = 0.0
        return BlobInfo(digest=digest, size=st.st_size, committed_at=st.st_mtime_ns / 1e9,
                        touched_at=touched)

    def _stat_blocking(self, digest: Digest) -> BlobInfo:
        try:
            st = os.stat(self._path(digest))
        except FileNotFoundError as e:
            raise blob_unknown(digest) from e
        return self._info(digest, st)

    async def stat(self, digest: Digest) -> BlobInfo:
        return await self._run(self._stat_blocking, digest)

    @contextmanager
    def _locked(self, digest: Digest) -> Iterator[os.stat_result]:
        """Hold the blob's flock; NotFound if it is gone once we have it."""
        path = self._path(digest)
        while True:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError as e:
                raise blob_unknown(digest) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                try:
                    now = os.stat(path)
                except FileNotFoundError:
                    now = None
                if now is None or (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                    continue  # deleted (perhaps committed again) while we waited: look again
                yield st
                return
            finally:
                os.close(fd)  # also releases the flock

    def _touch_blocking(self, digest: Digest) -> BlobInfo:
        with self._locked(digest) as st:
            sidecar = self._path(digest).with_name(digest.hex + TOUCHED)
            now = time.time_ns()
            try:
                os.utime(sidecar, ns=(now, now))
            except FileNotFoundError:
                os.close(os.open(sidecar, os.O_WRONLY | os.O_CREAT, 0o644))
                os.utime(sidecar, ns=(now, now))
            return self._info(digest, st)

    async def touch(self, digest: Digest) -> BlobInfo:
        return await self._run(self._touch_blocking, digest)

    def _delete_blocking(self, digest: Digest, unless_touched_since: float | None,
                         dry_run: bool) -> BlobInfo:
        with self._locked(digest) as st:
            info = self._info(digest, st)
            last_use = max(info.committed_at, info.touched_at)
            if unless_touched_since is not None and last_use >= unless_touched_since:
                raise Conflict(f"blob {digest} was committed or touched at {last_use:.3f}, "
                               f"not before {unless_touched_since:.3f}", detail_code="BLOB_IN_USE")
            if not dry_run:
                path = self._path(digest)
                unlink_missing_ok(path.with_name(digest.hex + TOUCHED))
                os.unlink(path)
                fsync_dir(path.parent)
            return info

    async def delete(self, digest: Digest, *, unless_touched_since: float | None = None,
                     dry_run: bool = False) -> BlobInfo:
        return await self._run(self._delete_blocking, digest, unless_touched_since, dry_run)

    async def read(self, digest: Digest, offset: int = 0,
                   length: int | None = None) -> AsyncIterator[bytes]:
        try:
            reader = await self._run(UncachedReader, self._path(digest), READ_CHUNK, DROP_BEHIND_MIN)
        except FileNotFoundError as e:
            raise blob_unknown(digest) from e
        # The next chunk is read while the caller sends this one: one read in flight at a
        # time (the reader has one buffer), never a disk idle behind a socket write.
        ahead: asyncio.Future[bytes] | None = None
        try:
            remaining = length if length is not None else reader.size() - offset
            if remaining > 0:
                ahead = asyncio.ensure_future(self._run(reader.pread, remaining, offset))
            while ahead is not None:
                chunk = await ahead
                ahead = None
                if not chunk:
                    break
                offset += len(chunk)
                remaining -= len(chunk)
                if remaining > 0:
                    ahead = asyncio.ensure_future(self._run(reader.pread, remaining, offset))
                yield chunk
        finally:
            if ahead is not None:  # the reader's fd and buffer stay until its read is over
                await asyncio.wait([ahead])
                if not ahead.cancelled():
                    ahead.exception()  # retrieved: a read error after the client left is moot
            reader.close()

    def _walk(self, after: str = "") -> Iterator[tuple[Digest, os.stat_result]]:
        """Blobs in digest order, strictly after the cursor, skipping whole directories."""
        for alg in sorted(a for a in _listdir(self._blobs) if a in _HEX_LEN):
            for prefix in sorted(_listdir(self._blobs / alg)):
                key = f"{alg}:{prefix}"
                if after and key < after[:len(key)]:
                    continue
                d = self._blobs / alg / prefix
                for name in sorted(_listdir(d)):
                    if len(name) != _HEX_LEN[alg] or f"{alg}:{name}" <= after:
                        continue  # touch sidecars, temp names, or before the cursor
                    try:
                        st = os.stat(d / name)
                    except FileNotFoundError:
                        continue  # deleted while we listed
                    yield Digest(f"{alg}:{name}"), st

    def _list_blocking(self, after: str, limit: int) -> tuple[list[BlobInfo], str]:
        out: list[BlobInfo] = []
        for digest, st in self._walk(after):
            if len(out) == limit:
                return out, out[-1].digest
            out.append(self._info(digest, st))
        return out, ""

    async def list(self, after: str = "", limit: int = 1000) -> tuple[list[BlobInfo], str]:
        if limit < 1:
            raise InvalidArgument(f"limit must be positive, not {limit}")
        return await self._run(self._list_blocking, after, limit)

    def _usage_blocking(self) -> Usage:
        blobs = total = 0
        for _, st in self._walk():
            blobs += 1
            total += st.st_size
        uploads = upload_bytes = 0
        for name in _listdir(self._ingest):
            try:
                upload_bytes += os.stat(self._ingest / name / DATA).st_size
                uploads += 1
            except FileNotFoundError:
                continue
        return Usage(blobs=blobs, bytes=total, uploads=uploads, upload_bytes=upload_bytes)

    async def usage(self) -> Usage:
        return await self._run(self._usage_blocking)

    # ---- upload sessions ------------------------------------------------------------

    def _upload_dir(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.match(upload_id):  # never let an id walk out of the ingest area
            raise unknown_upload(upload_id)
        return self._ingest / upload_id

    def _upload_lock(self, upload_id: str) -> asyncio.Lock:
        lock = self._upload_locks.get(upload_id)
        if lock is None:
            lock = self._upload_locks[upload_id] = asyncio.Lock()
        return lock

    async def _session(self, upload_id: str) -> IngestSession:
        """The live session, or one resumed from disk (caller holds the upload lock)."""
        d = self._upload_dir(upload_id)
        sess = self._sessions.pop(upload_id, None)
        if sess is not None and sess.is_current():
            self._sessions[upload_id] = sess
            sess.last_used = time.monotonic()
            return sess
        if sess is not None:
            sess.close()
        sess = await self._run(IngestSession.resume, d, upload_id)
        self._sessions[upload_id] = sess
        return sess

    def _drop(self, upload_id: str) -> None:
        sess = self._sessions.pop(upload_id, None)
        if sess is not None:
            sess.close()

    def _close_idle_sessions(self) -> None:
        cutoff = time.monotonic() - IDLE_SESSION_SECONDS
        for upload_id, sess in list(self._sessions.items()):
            if sess.last_used < cutoff and not self._upload_lock(upload_id).locked():
                self._drop(upload_id)

    async def start_upload(self, algorithm: str = "sha256",
                           labels: dict[str, str] | None = None) -> UploadInfo:
        self._close_idle_sessions()
        # uuid4: 122 random bits, so an id is also an unguessable capability (the OCI
        # upload URL handed to registry clients is nothing but the id)
        upload_id = uuid.uuid4().hex
        sess = await self._run(IngestSession.create, self._ingest / upload_id, upload_id, algorithm,
                               labels)
        self._sessions[upload_id] = sess
        return UploadInfo(id=upload_id, size=0, started_at=sess.state.started_at,
                          updated_at=sess.state.started_at, labels=sess.state.labels)

    async def _pump(self, sess: IngestSession, chunks: AsyncIterable[bytes]) -> None:
        """Copy chunks into the session, one batch in the writer thread while the next arrives."""
        pending: asyncio.Future | None = None
        batch: list[bytes] = []
        n = 0
        body_error: Exception | None = None
        it = aiter(chunks)
        try:
            while True:
                try:
                    chunk = await anext(it)
                except StopAsyncIteration:
                    break
                except Exception as e:
                    # The body broke off: keep every byte that did arrive, so that the
                    # client can resume from the size the session reports.
                    body_error = e
                    break
                if not chunk:
                    continue
                batch.append(chunk)
                n += len(chunk)
                if n >= BATCH_BYTES or len(batch) >= BATCH_BUFFERS:
                    if pending is not None:
                        fut, pending = pending, None
                        await self._written(sess, fut)
                    pending = self._submit_write(sess, batch)
                    batch, n = [], 0
            if pending is not None:
                fut, pending = pending, None
                await self._written(sess, fut)
            if batch:
                await self._written(sess, self._submit_write(sess, batch))
        finally:
            if pending is not None:  # cancelled while reading: let the batch in flight land
                await self._written(sess, pending)
        if body_error is not None:
            raise body_error

    def _submit_write(self, sess: IngestSession, batch: list[bytes]) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(
            self._io, sess.write, batch, self._hash, self._flush)

    async def _written(self, sess: IngestSession, fut: asyncio.Future) -> None:
        """Wait for a batch to be written. Even when cancelled, return only once the thread
        is done with the session's file: closing it under a running write is unsafe."""
        cancelled = False
        while True:
            try:
                await asyncio.shield(fut)
                break
            except asyncio.CancelledError:
                if fut.cancelled():  # the write itself never ran (the pool shut down)
                    raise
                cancelled = True  # ours: wait on, then report the write's own outcome
            except OSError as e:
                self._drop(sess.id)  # its hash may be ahead of the file: resume re-reads it
                if is_no_space(e):
                    raise Unavailable(f"no space left for upload {sess.id}") from e
                raise
        if cancelled:
            raise asyncio.CancelledError()

    @asynccontextmanager
    async def _exclusive(self, upload_id: str) -> AsyncIterator[IngestSession]:
        """The session, held against this process's other tasks and other processes."""
        async with self._upload_lock(upload_id):
            for _ in range(3):
                sess = await self._session(upload_id)
                try:
                    with sess.exclusive():
                        yield sess
                        return
                except StaleSession:
                    self._drop(upload_id)  # changed by another process: resume from disk
            raise Conflict(f"upload {upload_id} keeps changing under concurrent writers")

    async def append(self, upload_id: str, chunks: AsyncIterable[bytes], *,
                     offset: int | None = None) -> int:
        async with self._exclusive(upload_id) as sess:
            if offset is not None and offset != sess.size:
                raise RangeNotSatisfiable(
                    f"upload {upload_id} has {sess.size} bytes; a chunk at {offset} is out of order",
                    size=sess.size)
            await self._pump(sess, chunks)
            return sess.size

    async def upload_status(self, upload_id: str) -> UploadInfo:
        return await self._run(upload_info, self._upload_dir(upload_id), upload_id)

    async def commit(self, upload_id: str, digest: Digest, size: int | None = None,
                     chunks: AsyncIterable[bytes] | None = None) -> BlobInfo:
        async with self._exclusive(upload_id) as sess:
            if chunks is not None:
                await self._pump(sess, chunks)
            info = await self._run(self._commit_blocking, sess, digest, size)
            self._drop(upload_id)
            await self._run(sess.remove)
            return info

    def _commit_blocking(self, sess: IngestSession, digest: Digest, size: int | None) -> BlobInfo:
        if size is not None and size != sess.size:
            raise InvalidArgument(f"upload {sess.id} has {sess.size} bytes, not {size}",
                                  detail_code="SIZE_INVALID")
        actual = sess.digest(digest.algorithm)
        if actual != digest:
            raise InvalidArgument(f"upload {sess.id} has digest {actual}, not {digest}",
                                  detail_code="DIGEST_INVALID")
        info = self._link_or_touch(sess, digest)
        # Unlinked while we still hold the session's lock: no other process can resume
        # it and append to what is now the blob's inode.
        unlink_missing_ok(sess.data_path)
        return info

    def _link_or_touch(self, sess: IngestSession, digest: Digest) -> BlobInfo:
        target = self._path(digest)
        staged = False
        while True:
            if not staged and not target.exists():
                self._stage_for_link(sess, target)
                staged = True
            if staged:
                try:
                    # link, not rename: it refuses to replace an existing blob (never
                    # rewritten; a concurrent commit of the same digest cannot clobber it)
                    os.link(sess.data_path, target)
                    fsync_dir(target.parent)
                    return self._stat_blocking(digest)
                except FileExistsError:
                    pass
            if _same_file(sess.fd, target):
                # Linked by a commit killed before it unlinked the session's name. Touching
                # would wait forever for the flock this session holds on the same inode.
                self._stage_for_link(sess, target)
                return self._stat_blocking(digest)
            try:
                # Already stored: this commit counts as a use, for the GC fence.
                return self._touch_blocking(digest)
            except NotFound:
                continue  # deleted just now: link ours instead

    def _stage_for_link(self, sess: IngestSession, target: Path) -> None:
        # committed_at is now, not when the bytes arrived: a garbage-collector sweep
        # fenced at an earlier time must not take a blob committed after it started.
        now = time.time_ns()
        os.utime(sess.fd, ns=(now, now))
        os.fsync(sess.fd)
        sess.drop_cached_pages()
        makedirs_durable(target.parent, self._blobs)

    async def abort(self, upload_id: str) -> None:
        d = self._upload_dir(upload_id)
        async with self._upload_lock(upload_id):
            self._drop(upload_id)
            if not await self._run(d.is_dir):
                raise unknown_upload(upload_id)
            await self._run(_remove_tree, d)

    def _list_uploads_blocking(self) -> list[UploadInfo]:
        out = []
        for name in sorted(_listdir(self._ingest)):
            if not _UPLOAD_ID.match(name):
                continue
            try:
                out.append(upload_info(self._ingest / name, name))
            except NotFound:
                continue  # committed, aborted or half-started while we looked
        return out

    async def list_uploads(self) -> list[UploadInfo]:
        return await self._run(self._list_uploads_blocking)

    async def close(self) -> None:
        for upload_id in list(self._sessions):
            self._drop(upload_id)
        self._io.shutdown(wait=False, cancel_futures=True)
        self._hash.shutdown(wait=False, cancel_futures=True)
        self._flush.shutdown(wait=False, cancel_futures=True)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _remove_tree(d: Path) -> None:
    try:
        shutil.rmtree(d)
    except FileNotFoundError:
        pass  # removed by another process sharing the directory
