"""One upload session in the filesystem driver's ingest area: `ingest/<id>/{data,state.json}`.

The digest is computed while the bytes arrive: each batch is written by the calling
thread while a second thread hashes the same buffers, so hashing and writing overlap
(hashlib releases the GIL on big buffers). Hash objects cannot be persisted, so the
running hash lives in memory; a session found on disk after a restart (or changed by
another process sharing the directory) is re-hashed from its data file once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path

import msgspec

from services.layer_store.storage.fsutil import drop_cache, write_all, write_file_atomic, writeback
from shared.errors import Conflict, NotFound
from shared.messages.layer_store import UploadInfo
from shared.oci.digest import Digest, Hasher

DATA = "data"
STATE = "state.json"
_REHASH_CHUNK = 4 << 20
DROP_BEHIND_MIN = 4 << 20


class StaleSession(Exception):
    """Our open session no longer matches the ingest area: resume it from disk."""


class IngestState(msgspec.Struct, kw_only=True):
    id: str
    algorithm: str = "sha256"
    started_at: float = 0.0
    labels: dict[str, str] = {}


def unknown_upload(upload_id: str) -> NotFound:
    return NotFound(f"upload {upload_id} not found", detail_code="BLOB_UPLOAD_UNKNOWN")


def read_state(dir: Path, upload_id: str) -> IngestState:
    try:
        return msgspec.json.decode((dir / STATE).read_bytes(), type=IngestState)
    except FileNotFoundError as e:
        raise unknown_upload(upload_id) from e
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        # a state file torn by a crash before its rename cannot exist (atomic write);
        # anything else is foreign: treat the session as unknown rather than fail later.
        raise unknown_upload(upload_id) from e


def upload_info(dir: Path, upload_id: str) -> UploadInfo:
    state = read_state(dir, upload_id)
    try:
        st = os.stat(dir / DATA)
    except FileNotFoundError as e:
        raise unknown_upload(upload_id) from e
    return UploadInfo(id=upload_id, size=st.st_size, started_at=state.started_at,
                      updated_at=st.st_mtime_ns / 1e9, labels=state.labels)


class IngestSession:
    """An open upload: its data file descriptor, running hash and size."""

    def __init__(self, dir: Path, state: IngestState, fd: int, hasher: Hasher):
        self.dir = dir
        self.state = state
        self.fd = fd
        self.hasher = hasher
        self.size = hasher.size
        self.last_used = time.monotonic()
        self._last_batch: tuple[int, int] | None = None  # written, its writeback started

    @property
    def id(self) -> str:
        return self.state.id

    @property
    def data_path(self) -> Path:
        return self.dir / DATA

    @classmethod
    def create(cls, dir: Path, upload_id: str, algorithm: str,
               labels: dict[str, str] | None = None) -> "IngestSession":
        hasher = Hasher(algorithm)  # refuses an unknown algorithm before anything is made
        dir.mkdir(parents=True)
        state = IngestState(id=upload_id, algorithm=algorithm, started_at=time.time(),
                            labels=dict(labels or {}))
        fd = os.open(dir / DATA, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        # The state file is written last (a directory without it is a torn start, ignored).
        # No fsync: a session survives a restart of the process through the page cache;
        # after a machine crash the client restarts its upload, as with distribution.
        # Durability is the commit's job.
        write_file_atomic(dir / STATE, msgspec.json.encode(state), durable=False)
        return cls(dir, state, fd, hasher)

    @classmethod
    def resume(cls, dir: Path, upload_id: str) -> "IngestSession":
        """Reopen a session from disk, re-hashing the bytes it already holds."""
        state = read_state(dir, upload_id)
        try:
            fd = os.open(dir / DATA, os.O_WRONLY)
        except FileNotFoundError as e:
            raise unknown_upload(upload_id) from e
        try:
            hasher = Hasher(state.algorithm)
            _hash_file(dir / DATA, hasher)
            os.lseek(fd, hasher.size, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return cls(dir, state, fd, hasher)

    def is_current(self) -> bool:
        """False when another process appended to, committed or removed this session."""
        try:
            st = os.fstat(self.fd)
            named = os.stat(self.data_path)
        except OSError:
            return False
        return (st.st_ino, st.st_dev) == (named.st_ino, named.st_dev) and st.st_size == self.size

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Keep other processes sharing the ingest area off this session while we write.

        StaleSession when, by the time we hold the lock, another process has changed it."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise Conflict(f"upload {self.id} is being written by another process") from e
        try:
            if not self.is_current():
                raise StaleSession(self.id)
            yield
        finally:
            if self.fd >= 0:  # a dropped session's close already released the lock
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def write(self, bufs: list[bytes], hash_pool: Executor, flush_pool: Executor | None = None) -> None:
        """Append and hash one batch (blocking: runs in a worker thread).

        With a `flush_pool`, writeback of the batch starts there, in the background: the
        commit's fsync then finds little left to do, and a busy disk does not stall
        the writer (sync_file_range may block on a full device queue). The batch before
        is then dropped from the page cache (`fsutil.writeback` says why)."""
        if os.fstat(self.fd).st_nlink > 1:
            # A commit linked this file as the blob and was killed before unlinking it from
            # the session: the bytes are the blob's now, and appending would change a blob
            # under its digest. The session can still be committed (or aborted).
            raise Conflict(f"upload {self.id} was already committed", detail_code="BLOB_UPLOAD_INVALID")
        hashing = hash_pool.submit(_hash_bufs, self.hasher, bufs)
        try:
            n = write_all(self.fd, bufs)
        finally:
            hashing.result()
        if flush_pool is not None:
            flush_pool.submit(writeback, os.dup(self.fd), self.size, n, self._last_batch)
            self._last_batch = (self.size, n)
        self.size += n

    def drop_cached_pages(self) -> None:
        """After the commit's fsync: a big blob's pages leave the page cache (small ones,
        manifests and configs that are read back often, stay)."""
        if self.size >= DROP_BEHIND_MIN:
            drop_cache(self.fd)

    def digest(self, algorithm: str) -> Digest:
        """The digest of the bytes so far; another algorithm than the session's re-reads them."""
        if algorithm == self.hasher.algorithm:
            return self.hasher.digest()
        other = Hasher(algorithm)
        _hash_file(self.data_path, other, limit=self.size)
        return other.digest()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _hash_bufs(hasher: Hasher, bufs: list[bytes]) -> None:
    for b in bufs:
        hasher.update(b)


def _hash_file(path: Path, hasher: Hasher, limit: int | None = None) -> None:
    with open(path, "rb", buffering=0) as f:
        remaining = limit
        while remaining is None or remaining > 0:
            chunk = f.read(_REHASH_CHUNK if remaining is None else min(_REHASH_CHUNK, remaining))
            if not chunk:
                break
            hasher.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
