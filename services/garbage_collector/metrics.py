"""The garbage-collector's metrics: runs per job, and what the real ones freed."""

from __future__ import annotations

from prometheus_client import Counter

from shared.messages.gc import JobReport

RUNS = Counter("dockyard_gc_runs", "GC job runs, by job, trigger (manual, schedule), dry run and outcome",
               ["job", "trigger", "dry_run", "outcome"])
FREED = Counter("dockyard_gc_freed_bytes", "Bytes a job freed (real runs only)", ["job"])
REMOVED = Counter("dockyard_gc_removed", "Items a job removed (real runs only)", ["job"])


def record(reports: list[JobReport], dry_run: bool, trigger: str) -> None:
    for r in reports:
        RUNS.labels(r.job, trigger if trigger in ("manual", "schedule") else "other",
                    "true" if dry_run else "false", "error" if r.error else "ok").inc()
        if not dry_run:
            FREED.labels(r.job).inc(r.freed)
            REMOVED.labels(r.job).inc(r.removed)
