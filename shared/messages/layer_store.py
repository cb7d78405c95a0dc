"""layer-store requests, replies and events (subjects in shared.subjects)."""

from __future__ import annotations

import msgspec

from shared.oci.digest import Digest


class BlobInfo(msgspec.Struct, kw_only=True):
    digest: Digest
    size: int
    committed_at: float = 0.0  # unix seconds
    touched_at: float = 0.0  # last `touch` (a manifest push referenced it)


class StatRequest(msgspec.Struct, kw_only=True):
    digest: Digest
    # A manifest push about to reference this blob touches it, so that a concurrent
    # garbage-collector sweep (delete with unless_touched_since) leaves it alone.
    touch: bool = False


class StatReply(msgspec.Struct, kw_only=True):
    blob: BlobInfo
    url: str = ""  # where the data plane serves it (GET/HEAD, Range)


class DeleteRequest(msgspec.Struct, kw_only=True):
    digest: Digest
    # Refuse (Conflict) when the blob was committed or touched at/after this time.
    unless_touched_since: float | None = None
    dry_run: bool = False


class DeleteReply(msgspec.Struct, kw_only=True):
    deleted: bool
    freed: int = 0


class ListRequest(msgspec.Struct, kw_only=True):
    after: str = ""  # page cursor: the last digest of the previous page
    limit: int = 1000


class ListReply(msgspec.Struct, kw_only=True):
    blobs: list[BlobInfo]
    next: str = ""  # empty when this was the last page


class UsageReply(msgspec.Struct, kw_only=True):
    blobs: int
    bytes: int
    uploads: int = 0
    upload_bytes: int = 0


class LocateReply(msgspec.Struct, kw_only=True):
    url: str  # base URL of the HTTP data plane, e.g. http://127.0.0.1:41234
    driver: str = "filesystem"


class UploadInfo(msgspec.Struct, kw_only=True):
    id: str
    size: int
    started_at: float
    updated_at: float
    # Set by whoever started the session (see UPLOAD_HOOK_LABEL); kept with it on disk.
    labels: dict[str, str] = {}


class StartUploadRequest(msgspec.Struct, kw_only=True):
    """Optional JSON body of the data plane's `POST /uploads`."""

    labels: dict[str, str] = {}


class UploadListReply(msgspec.Struct, kw_only=True):
    uploads: list[UploadInfo]


class AbortRequest(msgspec.Struct, kw_only=True):
    id: str


# A session started with this label speaks the OCI upload protocol on the data plane
# (at the gateway's own path `/v2/<name>/blobs/uploads/<id>`, for clients sent there
# directly by the registry-gateway with a signed URL). Its commit is acknowledged only
# once the service answering this bus subject has taken it (the gateway links the blob
# into the session's repository): request UploadCommitted, reply UploadTaken.
UPLOAD_HOOK_LABEL = "oci.commit-hook"


class UploadCommitted(msgspec.Struct, kw_only=True):
    """Request to a session's commit hook: the blob is stored and verified."""

    upload_id: str
    digest: Digest
    size: int


class UploadTaken(msgspec.Struct, kw_only=True):
    location: str = ""  # the blob's URL, for the OCI client's `Location`


class BlobCommitted(msgspec.Struct, kw_only=True):
    """Event `dockyard.events.blob.committed`."""

    digest: Digest
    size: int
    committed_at: float


class BlobDeleted(msgspec.Struct, kw_only=True):
    digest: Digest
    size: int
