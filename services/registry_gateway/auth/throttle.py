"""Failed-login throttling, per user name and per client address.

After FREE_FAILURES failures in a row for a user name (FREE_CLIENT_FAILURES for an address,
which many people and CI jobs may share), each further failure blocks that name (or address)
for twice as long as the last, up to MAX_DELAY; the check runs before the password hash, so a
throttled guesser costs no bcrypt. A success clears the user's count, not the address's (one
valid login must not reset an address that guesses at others); an address's count fades after
FORGET_AFTER without failures.

Kept per process, not in a KV bucket: with R gateway replicas a guesser gets R times the
attempts, which the doubling delay makes a few more guesses, not a brute force; in exchange a
Basic-auth request pays no bus round trip, and a spray of invented user names fills a bounded
map here instead of a bucket every replica reads.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

FREE_FAILURES = 5
FREE_CLIENT_FAILURES = 20
BASE_DELAY = 1.0
MAX_DELAY = 900.0
FORGET_AFTER = 900.0
MAX_ENTRIES = 50_000


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


class LoginThrottle:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, free_failures: int = FREE_FAILURES,
                 free_client_failures: int = FREE_CLIENT_FAILURES, base_delay: float = BASE_DELAY,
                 max_delay: float = MAX_DELAY):
        self._clock = clock
        self._free = {"user": free_failures, "client": free_client_failures}
        self._base = base_delay
        self._max = max_delay
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()

    def _get(self, key: tuple[str, str], now: float) -> _Record | None:
        rec = self._records.get(key)
        if rec is not None and now - rec.last > FORGET_AFTER and now >= rec.blocked_until:
            del self._records[key]
            return None
        return rec

    def retry_after(self, user: str, client: str) -> int:
        """Whole seconds until `user` from `client` may try again; 0 if now."""
        now = self._clock()
        until = max((r.blocked_until for k in (("user", user), ("client", client))
                     if (r := self._get(k, now)) is not None), default=0.0)
        return math.ceil(until - now) if until > now else 0

    def failed(self, user: str, client: str) -> int:
        """Count a failure; the seconds it blocks for (0 while still within the free ones)."""
        now = self._clock()
        block = 0.0
        for key in (("user", user), ("client", client)):
            rec = self._get(key, now) or _Record()
            rec.failures += 1
            rec.last = now
            free = self._free[key[0]]
            if rec.failures >= free:
                delay = min(self._base * 2.0 ** min(rec.failures - free, 32), self._max)
                rec.blocked_until = now + delay
                block = max(block, delay)
            self._records[key] = rec
            self._records.move_to_end(key)
        while len(self._records) > MAX_ENTRIES:
            self._records.popitem(last=False)
        return math.ceil(block)

    def succeeded(self, user: str) -> None:
        self._records.pop(("user", user), None)
