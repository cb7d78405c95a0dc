"""Addresses on the bridge subnet, one per container, kept across agent restarts.

The allocations live in one small JSON file, rewritten atomically (temp file,
fsync, rename, fsync of the directory) on every change, so a crash leaves either
the old or the new state, never a torn one. Like CNI's host-local plugin, the
search for a free address starts after the last one handed out: a just-released
address is not reused at once, so stale ARP entries and conntrack flows of a
removed container do not hit its successor.
"""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from shared.errors import Conflict, Internal, InvalidArgument, Unavailable
from shared.fsutil import write_atomic


class Ipam:
    """One subnet's allocations. Not for several processes at once: one agent owns it."""

    def __init__(self, path: Path, subnet: IPv4Network, gateway: IPv4Address | None = None):
        self.path = path
        self.subnet = subnet
        self.gateway = gateway or subnet.network_address + 1
        self._first = int(subnet.network_address) + (2 if gateway is None else 1)
        self._last = int(subnet.broadcast_address) - 1
        self._by_id: dict[str, IPv4Address] = {}
        self._used: set[IPv4Address] = set()
        self._reserved = {self.gateway}  # never handed out
        self._cursor = self._first - 1  # the last address handed out
        self._lock = asyncio.Lock()
        self._load()

    # Reading ---------------------------------------------------------------
    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise Internal(f"cannot read IPAM state {self.path}: {e}") from e
        for cid, addr in raw.get("allocations", {}).items():
            ip = IPv4Address(addr)
            # A subnet changed in the config invalidates old addresses: drop them.
            if self._first <= int(ip) <= self._last and ip not in self._used and ip not in self._reserved:
                self._by_id[cid] = ip
                self._used.add(ip)
        last = raw.get("last")
        if last is not None and self._first <= int(IPv4Address(last)) <= self._last:
            self._cursor = int(IPv4Address(last))

    def get(self, container_id: str) -> IPv4Address | None:
        return self._by_id.get(container_id)

    def interface(self, ip: IPv4Address) -> IPv4Interface:
        return IPv4Interface(f"{ip}/{self.subnet.prefixlen}")

    def allocations(self) -> dict[str, IPv4Address]:
        return dict(self._by_id)

    # Changing ----------------------------------------------------------------
    async def allocate(self, container_id: str, want: IPv4Address | None = None) -> IPv4Address:
        """The container's address: its existing one, else `want` (`--ip`), else the next free one."""
        async with self._lock:
            ip = self._by_id.get(container_id)
            if ip is not None and (want is None or ip == want):
                return ip
            if ip is not None:
                raise Conflict(f"{container_id[:12]} already has {ip} on {self.subnet}")
            ip = self._claim(want) if want is not None else self._next_free()
            self._by_id[container_id] = ip
            self._used.add(ip)
            prev_cursor, self._cursor = self._cursor, int(ip)
            try:
                await self._persist()
            except BaseException:
                del self._by_id[container_id]
                self._used.discard(ip)
                self._cursor = prev_cursor
                raise
            return ip

    async def release(self, container_id: str) -> IPv4Address | None:
        """Free the container's address; releasing an unknown id is a no-op."""
        async with self._lock:
            ip = self._by_id.pop(container_id, None)
            if ip is None:
                return None
            self._used.discard(ip)
            await self._persist()
            return ip

    async def release_many(self, container_ids: list[str]) -> None:
        async with self._lock:
            gone = [self._by_id.pop(c) for c in container_ids if c in self._by_id]
            if gone:
                self._used.difference_update(gone)
                await self._persist()

    def _claim(self, want: IPv4Address) -> IPv4Address:
        if not self._first <= int(want) <= self._last:
            raise InvalidArgument(f"{want} is not a container address of {self.subnet} "
                                  f"({IPv4Address(self._first)}-{IPv4Address(self._last)})")
        if want in self._used or want in self._reserved:
            raise Conflict(f"address {want} is already in use on {self.subnet}")
        return want

    def _next_free(self) -> IPv4Address:
        size = self._last - self._first + 1
        if len(self._used) >= size:
            raise Unavailable(f"no free address left in {self.subnet}")
        n = self._cursor
        for _ in range(size):
            n = n + 1 if n < self._last else self._first
            ip = IPv4Address(n)
            if ip not in self._used and ip not in self._reserved:
                return ip
        raise Unavailable(f"no free address left in {self.subnet}")

    async def _persist(self) -> None:
        state = {
            "subnet": str(self.subnet),
            "last": str(IPv4Address(self._cursor)) if self._cursor >= self._first else None,
            "allocations": {cid: str(ip) for cid, ip in sorted(self._by_id.items())},
        }
        data = json.dumps(state, indent=1).encode()
        try:
            await asyncio.to_thread(_write_state, self.path, data)
        except OSError as e:
            raise Internal(f"cannot write IPAM state {self.path}: {e}") from e

    def remove_file(self) -> None:
        self.path.unlink(missing_ok=True)
        self._by_id.clear()
        self._used.clear()


def _write_state(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
