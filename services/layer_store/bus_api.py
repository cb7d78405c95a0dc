"""The layer-store's bus verbs, over a storage driver."""

from __future__ import annotations

import logging

from services.layer_store import metrics
from services.layer_store.storage.base import StorageDriver
from shared import subjects
from shared.bus import BusClient, BusService
from shared.messages.common import Empty, Ok
from shared.messages.layer_store import (AbortRequest, BlobCommitted, BlobDeleted, BlobInfo,
                                         DeleteReply, DeleteRequest, ListReply, ListRequest,
                                         LocateReply, StatReply, StatRequest, UploadCommitted,
                                         UploadListReply, UploadTaken, UsageReply)

log = logging.getLogger("dockyard.layer_store.bus")

MAX_PAGE = 10_000
HOOK_TIMEOUT = 10.0


class LayerStoreApi:
    """Handlers for the layer-store subjects; `url` is where the HTTP data plane listens."""

    def __init__(self, driver: StorageDriver, bus: BusClient, url: str):
        self.driver = driver
        self.bus = bus
        self.url = url.rstrip("/")

    def register(self, svc: BusService) -> None:
        svc.endpoint(subjects.BLOB_STAT, StatRequest, self.stat)
        svc.endpoint(subjects.BLOB_DELETE, DeleteRequest, self.delete)
        svc.endpoint(subjects.BLOB_LIST, ListRequest, self.list, empty_ok=True)
        svc.endpoint(subjects.BLOB_USAGE, Empty, self.usage)
        svc.endpoint(subjects.BLOB_LOCATE, Empty, self.locate)
        svc.endpoint(subjects.UPLOAD_LIST, Empty, self.uploads)
        svc.endpoint(subjects.UPLOAD_ABORT, AbortRequest, self.abort)

    async def stat(self, req: StatRequest) -> StatReply:
        info = await (self.driver.touch(req.digest) if req.touch else self.driver.stat(req.digest))
        return StatReply(blob=info, url=f"{self.url}/blobs/{req.digest}")

    async def delete(self, req: DeleteRequest) -> DeleteReply:
        info = await self.driver.delete(req.digest, unless_touched_since=req.unless_touched_since,
                                        dry_run=req.dry_run)
        if not req.dry_run:
            metrics.deleted(info.size)
            await self._publish(subjects.EVENT_BLOB_DELETED, BlobDeleted(digest=info.digest, size=info.size))
        return DeleteReply(deleted=not req.dry_run, freed=info.size)

    async def list(self, req: ListRequest) -> ListReply:
        blobs, nxt = await self.driver.list(req.after, min(req.limit, MAX_PAGE))
        return ListReply(blobs=blobs, next=nxt)

    async def usage(self, _: Empty) -> UsageReply:
        u = await self.driver.usage()
        return UsageReply(blobs=u.blobs, bytes=u.bytes, uploads=u.uploads, upload_bytes=u.upload_bytes)

    async def locate(self, _: Empty) -> LocateReply:
        return LocateReply(url=self.url, driver=self.driver.name)

    async def uploads(self, _: Empty) -> UploadListReply:
        return UploadListReply(uploads=await self.driver.list_uploads())

    async def abort(self, req: AbortRequest) -> Ok:
        await self.driver.abort(req.id)
        return Ok()

    async def on_commit(self, info: BlobInfo) -> None:
        metrics.committed(info)
        await self._publish(subjects.EVENT_BLOB_COMMITTED, BlobCommitted(
            digest=info.digest, size=info.size, committed_at=info.committed_at))

    async def commit_hook(self, subject: str, msg: UploadCommitted) -> UploadTaken:
        """Ask a session's hook to take a committed blob; its errors come back typed."""
        return await self.bus.request(subject, msg, UploadTaken, timeout=HOOK_TIMEOUT)

    async def _publish(self, subject: str, msg) -> None:
        try:
            await self.bus.publish(subject, msg)
        except Exception:  # events are advisory; the operation itself succeeded
            log.exception("could not publish %s", subject)
