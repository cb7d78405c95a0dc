"""The layer-store's own metrics: what the blob store holds, uploads being received, blobs
committed and deleted."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import Counter, Gauge

from services.layer_store.storage.base import StorageDriver
from shared.messages.layer_store import BlobInfo
from shared.metrics import exposition

BLOBS = Gauge("dockyard_blob_store_blobs", "Blobs in the store")
BYTES = Gauge("dockyard_blob_store_bytes", "Bytes of the blobs in the store")
SESSIONS = Gauge("dockyard_blob_store_upload_sessions", "Upload sessions open (started, not committed or aborted)")
SESSION_BYTES = Gauge("dockyard_blob_store_upload_bytes", "Bytes received into open upload sessions")
UPLOADS_IN_FLIGHT = Gauge("dockyard_blob_uploads_in_flight", "Upload requests (start, append, commit) being served")
COMMITTED = Counter("dockyard_blobs_committed", "Blobs committed (verified and stored)")
COMMITTED_BYTES = Counter("dockyard_blob_committed_bytes", "Bytes of the blobs committed")
DELETED = Counter("dockyard_blobs_deleted", "Blobs deleted")
DELETED_BYTES = Counter("dockyard_blob_deleted_bytes", "Bytes of the blobs deleted")

# The store is walked again on a scrape only after a change, or this long after the last
# walk (another replica on the same S3 bucket changes it without telling us).
USAGE_MAX_AGE = 60.0

_WRITES = frozenset({"POST", "PATCH", "PUT"})


class StoreGauges:
    """Blob store size and count, read from the driver when scraped."""

    def __init__(self, driver: StorageDriver):
        self.driver = driver
        self._read_at: float | None = None

    def changed(self) -> None:
        self._read_at = None

    async def refresh(self) -> None:
        if self._read_at is not None and time.monotonic() - self._read_at < USAGE_MAX_AGE:
            return
        u = await self.driver.usage()
        BLOBS.set(u.blobs)
        BYTES.set(u.bytes)
        SESSIONS.set(u.uploads)
        SESSION_BYTES.set(u.upload_bytes)
        self._read_at = time.monotonic()


_gauges: list[StoreGauges] = []


def watch(driver: StorageDriver) -> None:
    """Report `driver`'s usage on every scrape (one driver per process)."""
    g = StoreGauges(driver)
    _gauges[:] = [g]
    exposition.on_scrape(g.refresh)


def committed(info: BlobInfo) -> None:
    COMMITTED.inc()
    COMMITTED_BYTES.inc(info.size)
    for g in _gauges:
        g.changed()


def deleted(size: int) -> None:
    DELETED.inc()
    DELETED_BYTES.inc(size)
    for g in _gauges:
        g.changed()


@web.middleware
async def uploads_in_flight(request: web.Request, handler):
    """Every write to the data plane is part of an upload; count those being served."""
    if request.method not in _WRITES:
        return await handler(request)
    with UPLOADS_IN_FLIGHT.track_inprogress():
        return await handler(request)
