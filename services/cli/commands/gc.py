"""`dockyard gc`: run, schedule and inspect the garbage-collector."""

from __future__ import annotations

import time

JOB_CHOICES = ["registry", "untagged", "uploads", "agents", "build-cache", "all"]


def register(sub) -> None:
    p = sub.add_parser("gc", help="garbage-collect registry blobs, manifests, uploads, build cache, containers")
    gsub = p.add_subparsers(dest="gc_command", metavar="COMMAND")

    r = gsub.add_parser("run", help="run jobs now")
    r.add_argument("--dry-run", action="store_true", help="change nothing; list what would be removed")
    r.add_argument("--job", action="append", choices=JOB_CHOICES,
                   help="job to run (repeatable; default all)")
    r.add_argument("--grace", help="registry: keep blobs committed/touched this recently (e.g. 1h)")
    r.add_argument("--untagged-retention", help="untagged: keep manifests pushed this recently")
    r.add_argument("--upload-idle", help="uploads: abort sessions idle longer than this")
    r.add_argument("--exited-before", help="agents: remove containers exited longer ago than this")
    r.add_argument("--cache-max-age", help="build-cache: drop records unused for longer than this")
    r.add_argument("--cache-max-bytes", type=int,
                   help="build-cache: drop least recently used records until the cache fits")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress")
    from services.cli.progress import add_flag
    add_flag(r)
    r.set_defaults(func=run)

    s = gsub.add_parser("status", help="schedules, last run of each job and what it freed")
    s.set_defaults(func=status)

    sc = gsub.add_parser("schedule", help='run a job on a cron schedule, e.g. "0 * * * *" ("" removes)')
    sc.add_argument("job", choices=JOB_CHOICES)
    sc.add_argument("cron", help='5 fields, or 6 with seconds first')
    sc.set_defaults(func=schedule)

    po = gsub.add_parser("policy", help="retention policy of a repository")
    po.add_argument("repo")
    po.add_argument("--keep-last", type=int, help="keep the N most recently pushed images")
    po.add_argument("--keep-within", help="keep images pushed within this long (e.g. 7d)")
    po.add_argument("--keep-tags", action="append", default=[], help="keep tags matching this glob")
    po.add_argument("--remove", action="store_true", help="remove the repository's policy")
    po.set_defaults(func=policy)

    ex = gsub.add_parser("exclude", help="agents never remove images matching this pattern")
    ex.add_argument("pattern")
    ex.add_argument("--remove", action="store_true", help="remove the pattern")
    ex.set_defaults(func=exclude)


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    from shared.cron import parse_duration
    return parse_duration(text)


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return str(n)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


async def run(args, ctx) -> int:
    from shared import subjects
    from shared.messages.gc import RunReply, RunRequest
    req = RunRequest(jobs=args.job or ["all"], dry_run=args.dry_run,
                     grace_seconds=_seconds(args.grace),
                     untagged_retention_seconds=_seconds(args.untagged_retention),
                     upload_idle_seconds=_seconds(args.upload_idle),
                     exited_before_seconds=_seconds(args.exited_before),
                     cache_max_age_seconds=_seconds(args.cache_max_age),
                     cache_max_bytes=args.cache_max_bytes)
    from services.cli import progress as pg
    from shared import codec
    from shared.messages.gc import JobReport
    reporter = pg.reporter_for(args, ctx)

    def show(p) -> None:
        if p.kind == "step":
            reporter.step(p.step, p.total_steps, p.message)
        elif p.kind == "report":
            r = codec.decode(p.data, JobReport)
            reporter.data("gc_job", job=r.job, examined=r.examined, removed=r.removed, freed=r.freed,
                          kept=r.kept, seconds=round(r.duration, 3), error=r.error)
            verb = "would remove" if args.dry_run else "removed"
            reporter.finish_step(f"error: {r.error}" if r.error else
                                 f"examined {r.examined}, {verb} {r.removed}, freed {_bytes(r.freed)}")

    with reporter:
        reply = await (await ctx.bus()).request_with_progress(subjects.GC_RUN, req, RunReply, show, timeout=3600)
    if ctx.json_output:
        ctx.print_json(reply)
    else:
        verb = "WOULD REMOVE" if args.dry_run else "REMOVED"
        ctx.print_table(["JOB", "EXAMINED", verb, "FREED", "KEPT", "DURATION", "ERROR"],
                        [[r.job, r.examined, r.removed, _bytes(r.freed), r.kept,
                          f"{r.duration:.2f}s", r.error] for r in reply.reports])
        if args.dry_run:
            for r in reply.reports:
                for item in r.items:
                    print(f"{r.job}\t{item}")
    return 1 if any(r.error for r in reply.reports) else 0


async def status(args, ctx) -> int:
    from shared import subjects
    from shared.messages.common import Empty
    from shared.messages.gc import StatusReply
    st = await (await ctx.bus()).request(subjects.GC_STATUS, Empty(), StatusReply)
    if ctx.json_output:
        ctx.print_json(st)
        return 0
    rows = []
    for j in st.jobs:
        last = j.last
        rows.append([j.job, j.schedule or "-", _when(j.next_run) or "-",
                     _when(last.started_at) if last else "never",
                     last.removed if last else "", _bytes(last.freed) if last else "",
                     (last.error or "ok") if last else "", j.running_on or ""])
    ctx.print_table(["JOB", "SCHEDULE", "NEXT RUN", "LAST RUN", "REMOVED", "FREED", "RESULT",
                     "RUNNING ON"], rows)
    for p in st.policies:
        rules = []
        if p.keep_last is not None:
            rules.append(f"keep-last {p.keep_last}")
        if p.keep_within_seconds is not None:
            rules.append(f"keep-within {p.keep_within_seconds:g}s")
        rules += [f"keep-tags {g}" for g in p.keep_tags]
        print(f"policy {p.repo}: {', '.join(rules)}")
    for e in st.excludes:
        print(f"exclude {e}")
    return 0


async def schedule(args, ctx) -> int:
    from shared import subjects
    from shared.messages.gc import ScheduleReply, ScheduleRequest
    rep = await (await ctx.bus()).request(subjects.GC_SCHEDULE,
                                          ScheduleRequest(job=args.job, cron=args.cron), ScheduleReply)
    if ctx.json_output:
        ctx.print_json(rep)
    else:
        ctx.print_table(["JOB", "SCHEDULE"], [[s.job, s.cron] for s in rep.schedules])
    return 0


async def policy(args, ctx) -> int:
    from shared import subjects
    from shared.messages.gc import Policy, PolicyRequest
    rep = await (await ctx.bus()).request(
        subjects.GC_POLICY,
        PolicyRequest(repo=args.repo, keep_last=args.keep_last, keep_within=args.keep_within,
                      keep_tags=args.keep_tags, remove=args.remove), Policy)
    if ctx.json_output:
        ctx.print_json(rep)
    elif not args.remove:
        print(f"policy {rep.repo}: keep-last {rep.keep_last}, keep-within "
              f"{rep.keep_within_seconds}, keep-tags {rep.keep_tags}")
    return 0


async def exclude(args, ctx) -> int:
    from shared import subjects
    from shared.messages.gc import ExcludeReply, ExcludeRequest
    rep = await (await ctx.bus()).request(subjects.GC_EXCLUDE,
                                          ExcludeRequest(pattern=args.pattern, remove=args.remove),
                                          ExcludeReply)
    if ctx.json_output:
        ctx.print_json(rep)
    else:
        for e in rep.excludes:
            print(e)
    return 0
