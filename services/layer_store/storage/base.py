"""The storage driver protocol every blob backend implements (and the conformance suite checks).

Blobs are immutable and content-addressed. Bytes arrive through upload sessions (an
ingest area) and become a blob only at `commit`, after the digest and size are
verified; a blob that already exists is never rewritten.

Times are unix seconds. `committed_at`/`touched_at` feed the garbage-collector's fence:
`delete(unless_touched_since=T)` refuses (Conflict) a blob committed or touched at or
after T, and `touch` and `delete` of one digest are serialised, so a manifest push that
touched its blobs can never end up pointing at a deleted one.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

from shared.messages.layer_store import BlobInfo, UploadInfo
from shared.oci.digest import Digest


class Usage(NamedTuple):
    blobs: int
    bytes: int
    uploads: int
    upload_bytes: int


@runtime_checkable
class StorageDriver(Protocol):
    name: str

    # ---- blobs --------------------------------------------------------------------
    async def stat(self, digest: Digest) -> BlobInfo:
        """The blob's size and times; NotFound (BLOB_UNKNOWN) when absent."""

    async def touch(self, digest: Digest) -> BlobInfo:
        """Record `touched_at = now` (serialised with `delete`); NotFound when absent."""

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream `length` bytes (default: to the end) from `offset`; NotFound when absent."""

    def local_path(self, digest: Digest) -> Path | None:
        """A local file holding the blob, for sendfile; None when the driver has none."""

    async def delete(self, digest: Digest, *, unless_touched_since: float | None = None,
                     dry_run: bool = False) -> BlobInfo:
        """Remove the blob and return what it was; Conflict if committed/touched at or after
        `unless_touched_since`; NotFound when absent. `dry_run` checks without removing."""

    async def list(self, after: str = "", limit: int = 1000) -> tuple[list[BlobInfo], str]:
        """Blobs in digest order after the cursor; the next cursor, or "" on the last page."""

    async def usage(self) -> Usage:
        """Counts and bytes of blobs and of upload sessions."""

    # ---- upload sessions ------------------------------------------------------------
    async def start_upload(self, algorithm: str = "sha256",
                           labels: dict[str, str] | None = None) -> UploadInfo:
        """A new empty session; `algorithm` is the one hashed while appending. `labels` are
        kept with the session (upload_status and list_uploads return them)."""

    async def append(self, upload_id: str, chunks: AsyncIterable[bytes], *,
                     offset: int | None = None) -> int:
        """Append the chunks, returning the new size. `offset` must equal the current size
        (RangeNotSatisfiable otherwise); NotFound (BLOB_UPLOAD_UNKNOWN) for an unknown id."""

    async def upload_status(self, upload_id: str) -> UploadInfo:
        """The session's size and times; NotFound for an unknown id."""

    async def commit(self, upload_id: str, digest: Digest, size: int | None = None,
                     chunks: AsyncIterable[bytes] | None = None) -> BlobInfo:
        """Append the optional final chunks, verify digest and size (InvalidArgument with
        DIGEST_INVALID / SIZE_INVALID, nothing stored), make the blob durable and visible."""

    async def abort(self, upload_id: str) -> None:
        """Drop the session and its bytes; NotFound for an unknown id."""

    async def list_uploads(self) -> list[UploadInfo]:
        """Every session in the ingest area (also those a previous process left)."""

    async def close(self) -> None:
        """Release open files and threads."""
