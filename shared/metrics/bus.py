"""Bus request metrics, recorded once in `shared.bus.BusService`'s handler wrapper."""

from __future__ import annotations

from shared.metrics.families import BUS_BYTES_IN, BUS_BYTES_OUT, BUS_DURATION, BUS_REQUESTS


def observe(subject: str, code: str, seconds: float, received: int, sent: int) -> None:
    """One handled request on the registered `subject` (a pattern or one agent's own subject)."""
    BUS_REQUESTS.labels(subject, code).inc()
    BUS_DURATION.labels(subject).observe(seconds)
    if received:
        BUS_BYTES_IN.labels(subject).inc(received)
    if sent:
        BUS_BYTES_OUT.labels(subject).inc(sent)
