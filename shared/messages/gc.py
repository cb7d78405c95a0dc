"""garbage-collector requests, replies and events, and the prune verbs it calls.

The builder and the runtime-agents implement the prune verbs (`PruneRequest` ->
`PruneReply`); the GC only calls them. Subjects of the GC's own verbs are in
`shared.subjects` (GC_RUN, GC_STATUS, ...).
"""

from __future__ import annotations

import msgspec

from shared.messages.common import Inbox

# ---- prune verbs served by other services ----------------------------------------------

AGENT_PRUNE_VERB = "prune"  # per host: shared.subjects.agent(agent_id, AGENT_PRUNE_VERB)


class PruneRequest(msgspec.Struct, kw_only=True):
    """Remove what is old or over budget; with `dry_run` only report what would go."""

    max_age_seconds: float | None = None  # build cache: records unused for longer
    max_bytes: int | None = None  # build cache: budget, least recently used dropped first
    exited_before_seconds: float | None = None  # agents: containers exited longer ago
    exclude: list[str] = []  # agents: image reference patterns (fnmatch) never removed
    dry_run: bool = False
    # volumes (issue 12): `container prune`, `image prune`, `system prune` call this verb too
    images: bool = True  # agents: False prunes containers only (`container prune`)
    dangling_only: bool = False  # agents: only images no name refers to (`image prune` without -a)
    labels: list[str] = []  # agents: --filter label=K[=V] (containers and images must match all)
    created_before_seconds: float | None = None  # agents: --filter until= (created/pulled longer ago)


class PruneReply(msgspec.Struct, kw_only=True):
    examined: int = 0
    removed: int = 0
    freed: int = 0  # bytes
    items: list[str] = []  # what was (or, in a dry run, would be) removed


# ---- the garbage-collector's own verbs -------------------------------------------------

JOB_REGISTRY = "registry"
JOB_UNTAGGED = "untagged"
JOB_UPLOADS = "uploads"
JOB_BUILD_CACHE = "build-cache"
JOB_AGENTS = "agents"
# `all` runs them in this order: manifests first, so their blobs go in the same run.
ALL_JOBS = (JOB_UNTAGGED, JOB_REGISTRY, JOB_UPLOADS, JOB_BUILD_CACHE, JOB_AGENTS)


class RunRequest(msgspec.Struct, kw_only=True):
    jobs: list[str] = []  # empty or "all": every job
    dry_run: bool = False
    progress_inbox: Inbox = ""  # a Progress "step" per job as it starts, a "report" (its JobReport) as it ends
    # Overrides of the service's settings for this run (None: the configured value).
    grace_seconds: float | None = None  # registry: blobs committed/touched this recently stay
    # registry: how long after T0 the manifest links are read, so that a manifest push that
    # touched its blobs before T0 has written its link by then
    settle_seconds: float | None = None
    untagged_retention_seconds: float | None = None  # untagged: manifests pushed this recently stay
    upload_idle_seconds: float | None = None  # uploads: sessions idle longer are aborted
    exited_before_seconds: float | None = None  # agents: containers exited longer ago go
    cache_max_age_seconds: float | None = None  # build-cache
    cache_max_bytes: int | None = None  # build-cache


class JobReport(msgspec.Struct, kw_only=True):
    job: str
    dry_run: bool = False
    examined: int = 0
    removed: int = 0
    freed: int = 0  # bytes
    duration: float = 0.0  # seconds
    started_at: float = 0.0  # unix seconds
    items: list[str] = []  # filled on dry runs (and real runs, capped)
    kept: int = 0  # candidates kept because something touched or used them during the run
    error: str = ""  # a job that failed reports why; the others still run
    trigger: str = "manual"  # manual | schedule
    tick: float = 0.0  # the cron tick a scheduled run served
    replica: str = ""


class RunReply(msgspec.Struct, kw_only=True):
    reports: list[JobReport]


class GcFinished(msgspec.Struct, kw_only=True):
    """Event `dockyard.events.gc.finished`, once per run (manual or scheduled)."""

    reports: list[JobReport]
    dry_run: bool = False
    trigger: str = "manual"


class ScheduleRequest(msgspec.Struct, kw_only=True):
    job: str
    cron: str  # 5 fields, or 6 with a seconds field first; "" removes the schedule


class Schedule(msgspec.Struct, kw_only=True):
    job: str
    cron: str
    created_at: float = 0.0


class Policy(msgspec.Struct, kw_only=True):
    """Per-repository retention: a manifest is kept when any rule keeps it."""

    repo: str
    keep_last: int | None = None  # the N most recently pushed images
    keep_within_seconds: float | None = None  # images pushed within this window
    keep_tags: list[str] = []  # tags matching any glob

    def is_empty(self) -> bool:
        return self.keep_last is None and self.keep_within_seconds is None and not self.keep_tags


class PolicyRequest(msgspec.Struct, kw_only=True):
    repo: str
    keep_last: int | None = None
    keep_within: str | None = None  # "7d", "12h", "30m", "90s" or seconds
    keep_tags: list[str] = []
    remove: bool = False


class ExcludeRequest(msgspec.Struct, kw_only=True):
    pattern: str
    remove: bool = False


class ExcludeReply(msgspec.Struct, kw_only=True):
    excludes: list[str] = []


class ScheduleReply(msgspec.Struct, kw_only=True):
    schedules: list[Schedule] = []


class JobStatus(msgspec.Struct, kw_only=True):
    job: str
    schedule: str = ""
    next_run: float = 0.0
    last: JobReport | None = None
    running_on: str = ""  # replica holding the job's lease


class StatusReply(msgspec.Struct, kw_only=True):
    jobs: list[JobStatus]
    policies: list[Policy] = []
    excludes: list[str] = []
