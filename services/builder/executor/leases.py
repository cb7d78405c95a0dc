"""Leases of running builds on the cache records they use (containerd's leases, for KV records).

A build names every cache key in its lease *before* it reads the record; the
prune re-reads the leases *after* deleting records and puts back any it finds
leased. So a record a running build looked up is either never deleted, or
restored, or the build's lookup came after the delete and simply missed: a
prune never breaks a build in progress, on any replica.

The lease bucket has a TTL: a live build renews its lease, the lease of a
builder that died expires on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from shared.bus import TypedKV, kv_key
from shared.errors import DockyardError
from shared.messages.builder import BuildLease
from shared.subjects import KV_BUILD_LEASES

log = logging.getLogger("dockyard.builder.leases")
LEASE_TTL = 120.0  # seconds a lease outlives its last renewal
_RENEW_EVERY = LEASE_TTL / 4


class Leases:
    def __init__(self, kv: TypedKV | None, builder_id: str = ""):
        self.kv, self.builder_id = kv, builder_id

    @classmethod
    async def open(cls, nc, builder_id: str = "") -> "Leases":
        kv = await TypedKV.open(nc, KV_BUILD_LEASES, BuildLease, ttl=LEASE_TTL,
                                description="cache keys used by running builds")
        return cls(kv, builder_id)

    def lease(self) -> "Lease":
        return Lease(self)

    async def leased_keys(self) -> set[str]:
        """Every cache key a live build holds (raises Unavailable if the bucket cannot be read)."""
        if self.kv is None:
            return set()
        return {k for _, lease, _ in await self.kv.items() for k in lease.keys}


class Lease:
    """One build's lease: `add` before using a record; `release` when the build ends."""

    def __init__(self, leases: Leases):
        self.leases = leases
        self.key = kv_key(leases.builder_id or "builder", uuid.uuid4().hex)
        self.value = BuildLease(builder=leases.builder_id, started_at=time.time(), keys=[])
        self._renewer: asyncio.Task | None = None

    async def add(self, cache_key: str) -> None:
        if cache_key in self.value.keys:
            return
        self.value.keys.append(cache_key)
        await self._write()
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew())

    async def _write(self) -> None:
        if self.leases.kv is None:
            return
        try:
            await self.leases.kv.put(self.key, self.value)
        except DockyardError as e:
            # Without its lease a build still works; only a concurrent prune could then
            # drop a record it uses, which costs a rebuild of that step, not a failure.
            log.warning("lease %s: %s", self.key, e)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(_RENEW_EVERY)
            await self._write()

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
            if self.leases.kv is not None:
                try:
                    await self.leases.kv.delete(self.key)
                except DockyardError as e:
                    log.warning("lease %s not released (it expires): %s", self.key, e)
