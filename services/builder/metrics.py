"""The builder's metrics: builds by outcome and duration, steps by cache state (the cache
hit ratio is `rate(..._steps_total{cache="hit"}) / rate(..._steps_total)`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge, Histogram

from shared.errors import DockyardError
from shared.messages.builder import BuildReply, BuildRequest

BUILDS = Counter("dockyard_builds", "Builds finished, by outcome (ok or an error code)", ["outcome"])
DURATION = Histogram("dockyard_build_duration_seconds", "Time a build took, pushing included",
                     buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf")))
STEPS = Counter("dockyard_build_steps", "Build steps (instructions that make a layer or config), by cache state",
                ["cache"])
IN_FLIGHT = Gauge("dockyard_builds_in_flight", "Builds running")
LAST_HIT_RATIO = Gauge("dockyard_build_last_cache_hit_ratio", "Cached steps over all steps of the last build")


def counted(build: Callable[[BuildRequest], Awaitable[BuildReply]]) -> Callable[[BuildRequest], Awaitable[BuildReply]]:
    """`build`, counted."""
    async def wrapped(req: BuildRequest) -> BuildReply:
        start, outcome = time.perf_counter(), "INTERNAL"
        try:
            with IN_FLIGHT.track_inprogress():
                reply = await build(req)
            outcome = "ok"
        except DockyardError as e:
            outcome = e.code
            raise
        finally:
            BUILDS.labels(outcome).inc()
            DURATION.observe(time.perf_counter() - start)
        hits = sum(1 for s in reply.steps if s.cached)
        STEPS.labels("hit").inc(hits)
        STEPS.labels("miss").inc(len(reply.steps) - hits)
        if reply.steps:
            LAST_HIT_RATIO.set(hits / len(reply.steps))
        return reply
    return wrapped
