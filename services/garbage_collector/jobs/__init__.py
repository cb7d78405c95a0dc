"""The garbage-collector's jobs, one module each; `run_job` dispatches by name.

Each job takes the shared `JobContext` and the run's `Options` and returns a `JobReport`;
with `dry_run` it changes nothing and lists exactly what a real run would remove.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from shared.bus import BusClient
from shared.config import Config
from shared.errors import DockyardError, InvalidArgument
from shared.messages.gc import ALL_JOBS, JobReport, RunRequest
from shared.registry_meta import RegistryMeta
from shared.cron import parse_duration
from services.garbage_collector.state import GcState

MAX_SETTLE = 600.0  # seconds


@dataclass(frozen=True, slots=True)
class Settings:
    """Defaults of a run, from DOCKYARD_GC_* settings; a RunRequest may override each."""

    grace: float = 3600.0
    settle: float = 0.0
    untagged_retention: float = 24 * 3600.0
    upload_idle: float = 24 * 3600.0
    exited_before: float = 3600.0  # docker-gc's GRACE_PERIOD_SECONDS
    cache_max_age: float | None = 7 * 24 * 3600.0
    cache_max_bytes: int | None = None
    delete_concurrency: int = 32
    registry_suffix: str = ""  # isolates a test's registry buckets (RegistryMeta.open)
    state_suffix: str = ""  # isolates a test's `dockyard-gc` bucket

    @classmethod
    def from_config(cls, cfg: Config) -> "Settings":
        def dur(name: str, default: float | None) -> float | None:
            raw = cfg.env(name, "")
            return parse_duration(raw) if raw else default

        max_bytes = cfg.env("GC_CACHE_MAX_BYTES", "")
        d = cls()
        return cls(grace=dur("GC_GRACE", d.grace),
                   settle=dur("GC_SETTLE", d.settle),
                   untagged_retention=dur("GC_UNTAGGED_RETENTION", d.untagged_retention),
                   upload_idle=dur("GC_UPLOAD_IDLE", d.upload_idle),
                   exited_before=dur("GC_EXITED_BEFORE", d.exited_before),
                   cache_max_age=dur("GC_CACHE_MAX_AGE", d.cache_max_age),
                   cache_max_bytes=int(max_bytes) if max_bytes else None,
                   registry_suffix=cfg.env("REGISTRY_META_SUFFIX", ""),
                   state_suffix=cfg.env("GC_STATE_SUFFIX", ""))


@dataclass(frozen=True, slots=True)
class Options:
    """One run's effective settings."""

    dry_run: bool
    grace: float
    settle: float
    untagged_retention: float
    upload_idle: float
    exited_before: float
    cache_max_age: float | None
    cache_max_bytes: int | None

    @classmethod
    def of(cls, req: RunRequest, s: Settings) -> "Options":
        def pick(v, default):
            return default if v is None else v
        for name in ("grace_seconds", "settle_seconds", "untagged_retention_seconds", "upload_idle_seconds",
                     "exited_before_seconds", "cache_max_age_seconds", "cache_max_bytes"):
            v = getattr(req, name)
            if v is not None and v < 0:
                raise InvalidArgument(f"{name} must not be negative")
        # The run sleeps for settle, holding its job's lease: an hour would be a mistake.
        if req.settle_seconds is not None and req.settle_seconds > MAX_SETTLE:
            raise InvalidArgument(f"settle_seconds must be at most {MAX_SETTLE:g}")
        return cls(dry_run=req.dry_run,
                   grace=pick(req.grace_seconds, s.grace),
                   settle=pick(req.settle_seconds, s.settle),
                   untagged_retention=pick(req.untagged_retention_seconds, s.untagged_retention),
                   upload_idle=pick(req.upload_idle_seconds, s.upload_idle),
                   exited_before=pick(req.exited_before_seconds, s.exited_before),
                   cache_max_age=pick(req.cache_max_age_seconds, s.cache_max_age),
                   cache_max_bytes=pick(req.cache_max_bytes, s.cache_max_bytes))


@dataclass(slots=True)
class JobContext:
    nc: NATS
    bus: BusClient
    state: GcState
    meta: RegistryMeta
    settings: Settings
    replica: str = ""
    clock: Callable[[], float] = field(default=time.time)


JobFn = Callable[[JobContext, Options, JobReport], Awaitable[None]]


def _registry() -> dict[str, JobFn]:
    # Imported here: each job module imports this package for the types above.
    from services.garbage_collector.jobs import agents, build_cache, registry, untagged, uploads
    return {"registry": registry.run, "untagged": untagged.run, "uploads": uploads.run,
            "build-cache": build_cache.run, "agents": agents.run}


def expand(jobs: list[str]) -> list[str]:
    """Job names in run order; 'all' means every job."""
    names = list(ALL_JOBS) if not jobs or "all" in jobs else jobs
    unknown = [j for j in names if j not in ALL_JOBS]
    if unknown:
        raise InvalidArgument(f"unknown job {unknown[0]!r} (jobs: {', '.join(ALL_JOBS)}, all)")
    return [j for j in ALL_JOBS if j in names]


async def run_job(ctx: JobContext, name: str, opts: Options, *, trigger: str = "manual",
                  tick: float = 0.0) -> JobReport:
    """Run one job; its failure is reported, not raised, so the other jobs still run."""
    fn = _registry()[name]
    report = JobReport(job=name, dry_run=opts.dry_run, started_at=ctx.clock(), trigger=trigger,
                       tick=tick, replica=ctx.replica)
    start = time.monotonic()
    try:
        await fn(ctx, opts, report)
    except DockyardError as e:
        report.error = f"{e.code}: {e.message}"
    report.duration = round(time.monotonic() - start, 6)
    return report
