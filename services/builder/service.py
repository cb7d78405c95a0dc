"""The builder service on the bus: `dockyard.builder.build|import|history|context.missing`, any replica answers.

Builds stream Progress to the request's `progress_inbox`; layers and unpacked
snapshots live under `<data_dir>/builder`, the cache records in the
`dockyard-build-cache` KV bucket that every replica shares.
"""

from __future__ import annotations

import asyncio
import logging
import os

from shared import bus, subjects
from shared.config import Config
from shared import codec
from shared.messages.builder import (BuildRequest, CachePruned, ContextMissingRequest,
                                     HistoryRequest, ImportRequest)
from shared.messages.gc import PruneRequest
from shared.messages.common import Progress
from shared.registry.auth import bus_token_provider
from services.builder import metrics
from services.builder.executor.build import ALLOW_INSECURE_ENV
from services.builder.executor.cache import BuildCache
from services.builder.executor.images import Registries
from services.builder.executor.leases import Leases
from services.builder.executor.store import LocalStore
from services.builder.handlers import Builder

log = logging.getLogger("dockyard.builder")
SERVICE_ACCOUNT = "builder"


async def serve(cfg: Config) -> None:
    """Run the builder until cancelled, then drain in-flight builds."""
    nc = await bus.connect(cfg.nats_url, name="dockyard-builder")
    client = bus.BusClient(nc)
    svc = bus.BusService(nc, subjects.BUILDER, description="Dockerfile to image, with a shared layer cache")
    regs = Registries(cfg.registry_base_url, bus_token_provider(client, SERVICE_ACCOUNT), ca_file=cfg.fleet_ca)
    builder: Builder | None = None
    pruned_sub = None
    try:
        cache = await BuildCache.open(nc, builder_id=cfg.host_id)
        leases = await Leases.open(nc, builder_id=cfg.host_id)

        async def publish(inbox: str, p: Progress) -> None:
            await bus.publish_progress(nc, inbox, p)

        async def announce(ev: CachePruned) -> None:
            await client.publish(subjects.EVENT_CACHE_PRUNED, ev)

        builder = Builder(LocalStore(cfg.service_dir("builder")), cache, regs, publish, leases, announce,
                          allow_insecure=os.environ.get(ALLOW_INSECURE_ENV) == "1")
        svc.endpoint(subjects.BUILD, BuildRequest, metrics.counted(builder.build),
                     max_bytes=512 << 10)  # the Dockerfile is inline
        svc.endpoint(subjects.BUILD_CHECK, BuildRequest, builder.check, max_bytes=512 << 10)
        svc.endpoint(subjects.BUILD_IMPORT, ImportRequest, builder.import_image)
        svc.endpoint(subjects.BUILD_HISTORY, HistoryRequest, builder.history)
        svc.endpoint(subjects.BUILDER_PRUNE, PruneRequest, builder.prune)
        # One digest per context file: only the server's max_payload bounds it.
        svc.endpoint(subjects.BUILD_CONTEXT_MISSING, ContextMissingRequest, builder.context_missing,
                     max_bytes=None)
        pruned_sub = await nc.subscribe(subjects.EVENT_CACHE_PRUNED, cb=_on_pruned(builder))
        await svc.start()
        log.info("builder %s serving on %s", svc.id, cfg.nats_url)
        await asyncio.Event().wait()
    finally:
        await svc.stop()
        if pruned_sub is not None:
            await pruned_sub.unsubscribe()
        if builder is not None:
            builder.close()
        await regs.close()
        await nc.drain()


def _on_pruned(builder: Builder):
    """Every replica drops its local copies of layers a prune (on any replica) freed."""
    async def cb(msg) -> None:
        try:
            await builder.on_pruned(codec.decode(msg.data, CachePruned))
        except Exception:  # an event must never take the subscription down
            log.exception("cache-pruned event")
    return cb
