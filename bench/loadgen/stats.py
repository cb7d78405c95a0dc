"""Latencies per operation, request and byte counts, errors: what a load run prints."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    finished: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    throttled: int = 0  # 429/503 answers that were waited out and retried
    retry_after_missing: int = 0  # a 429/503 without Retry-After
    bytes_up: int = 0
    bytes_down: int = 0
    errors: list[str] = field(default_factory=list)

    def op(self, name: str, seconds: float) -> None:
        self.latencies[name].append(seconds)

    def error(self, what: str) -> None:
        self.errors.append(what)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def summary(self) -> dict:
        t = self.elapsed or 1e-9
        ops = {name: {"count": len(v), "p50_ms": percentile(v, 50) * 1000, "p99_ms": percentile(v, 99) * 1000}
               for name, v in sorted(self.latencies.items())}
        return {"seconds": round(t, 2), "requests": self.requests, "requests_per_s": self.requests / t,
                "bytes_per_s": (self.bytes_up + self.bytes_down) / t, "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down, "errors": len(self.errors), "throttled": self.throttled,
                "retry_after_missing": self.retry_after_missing, "statuses": dict(self.statuses), "ops": ops}

    def report(self, title: str) -> str:
        s = self.summary()
        lines = [f"{title}: {s['requests']} requests in {s['seconds']:.1f} s = {s['requests_per_s']:.0f} req/s, "
                 f"{s['bytes_per_s'] / 1e6:.1f} MB/s (up {self.bytes_up / 1e6:.0f} MB, down "
                 f"{self.bytes_down / 1e6:.0f} MB), errors {s['errors']}, throttled {s['throttled']}",
                 f"  {'operation':<12}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}"]
        for name, o in s["ops"].items():
            lines.append(f"  {name:<12}{o['count']:>8}{o['p50_ms']:>10.1f}{o['p99_ms']:>10.1f}")
        for e in self.errors[:10]:
            lines.append(f"  error: {e}")
        return "\n".join(lines)
