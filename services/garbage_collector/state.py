"""The garbage-collector's shared state in KV `dockyard-gc`: schedules, retention policies,
image excludes and the last report of each job (every replica reads and writes the same)."""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from shared.bus import TypedKV, kv_bucket, kv_key
from shared.messages.gc import JobReport, Policy, Schedule
from shared.subjects import KV_GC
from services.garbage_collector import kvscan


class Exclude(msgspec.Struct, kw_only=True):
    pattern: str


class GcState:
    def __init__(self, nc: NATS, kv: Any):
        self.nc = nc
        self.kv = kv
        self.bucket = kv._name
        self.schedules = TypedKV(kv, Schedule)
        self.policies = TypedKV(kv, Policy)
        self.excludes = TypedKV(kv, Exclude)
        self.reports = TypedKV(kv, JobReport)

    @classmethod
    async def open(cls, nc: NATS, *, suffix: str = "") -> "GcState":
        """`suffix` isolates a test's state from other tests on the same NATS."""
        return cls(nc, await kv_bucket(nc, KV_GC + suffix, description="garbage-collector state"))

    async def _scan(self, typ: type, prefix: str) -> list:
        # kvscan, not TypedKV.items: a listing must never come back empty by accident
        # (a scheduler would skip its ticks).
        return [(k, v) for k, v, _ in await kvscan.scan(self.nc, self.bucket, typ, prefix=prefix)]

    async def put_schedule(self, job: str, cron: str, now: float) -> None:
        await self.schedules.put(kv_key("schedule", job), Schedule(job=job, cron=cron, created_at=now))

    async def remove_schedule(self, job: str) -> None:
        await self.schedules.delete(kv_key("schedule", job))

    async def list_schedules(self) -> list[Schedule]:
        return [v for _, v in await self._scan(Schedule, "schedule.")]

    async def put_policy(self, policy: Policy) -> None:
        await self.policies.put(kv_key("policy", policy.repo), policy)

    async def remove_policy(self, repo: str) -> None:
        await self.policies.delete(kv_key("policy", repo))

    async def list_policies(self) -> list[Policy]:
        return [v for _, v in await self._scan(Policy, "policy.")]

    async def add_exclude(self, pattern: str) -> None:
        await self.excludes.put(kv_key("exclude", pattern), Exclude(pattern=pattern))

    async def remove_exclude(self, pattern: str) -> None:
        await self.excludes.delete(kv_key("exclude", pattern))

    async def list_excludes(self) -> list[str]:
        return sorted(v.pattern for _, v in await self._scan(Exclude, "exclude."))

    async def put_report(self, report: JobReport) -> None:
        # Keep a status small: a real run's item list can be long.
        await self.reports.put(kv_key("status", report.job),
                               msgspec.structs.replace(report, items=report.items[:100]))

    async def last_report(self, job: str) -> JobReport | None:
        got = await self.reports.get(kv_key("status", job))
        return got[0] if got else None
