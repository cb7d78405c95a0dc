"""Which host a container runs on: the one with the most free memory that fits, locality breaking ties.

Hosts come from the agents' heartbeats; one whose last heartbeat is older than
HEARTBEAT_STALE is lost and never chosen. Free memory within TIE_BAND of the best
counts as a tie (real hosts never have equal bytes free): among tied hosts, the one
already holding most of the image's layers wins (no pull), then the roomier one, then
the agent id, so that equal hosts are chosen the same way every time.

Pure functions over plain values: the CLI does the bus round trips (see
services/cli/commands/containers.py `run`), tests drive these with tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.errors import InvalidArgument, NotFound, Unavailable
from shared.messages.agent import Heartbeat, ImagesReply, is_lost
from shared.oci.reference import DEFAULT_TAG, Reference

MiB = 1 << 20
TIE_BAND = 0.10  # free memory this close (a fraction of the best host's) is a tie


@dataclass(frozen=True)
class Host:
    id: str
    memory_free: int  # bytes not yet promised to running containers' limits
    lost: bool = False
    idle_for: float = 0.0  # seconds since its last heartbeat
    layers: frozenset[str] = frozenset()  # diff ids of the layers it holds

    @classmethod
    def from_heartbeat(cls, beat: Heartbeat, now: float) -> "Host":
        idle = max(0.0, now - beat.time)
        return cls(id=beat.agent_id, memory_free=beat.memory_free, lost=is_lost(beat, now), idle_for=idle)


def contenders(hosts: Iterable[Host], memory: int | None) -> list[Host]:
    """The live hosts that fit `memory` bytes with free memory tied with the best one's."""
    hosts = list(hosts)
    live = [h for h in hosts if not h.lost]
    if not live:
        lost = ", ".join(sorted(h.id for h in hosts))
        raise Unavailable("no runtime-agent is running (see `dockyard agents`)"
                          + (f"; lost: {lost}" if lost else ""))
    need = memory or 0
    fits = [h for h in live if h.memory_free >= need]
    if not fits:
        best = max(live, key=lambda h: (h.memory_free, h.id))
        raise Unavailable(f"no host has {_mib_up(need)} MiB free "
                          f"(largest: {best.memory_free // MiB} MiB on {best.id})")
    top = max(h.memory_free for h in fits)
    return [h for h in fits if h.memory_free >= top * (1 - TIE_BAND)]


def choose(hosts: Iterable[Host], memory: int | None, *, wanted: frozenset[str] = frozenset(),
           pin: str | None = None) -> Host:
    """The host to run on; `wanted` are the image's layers (diff ids), `pin` is `--host`."""
    hosts = list(hosts)
    if pin:
        return _pinned(hosts, pin, memory)
    return max(contenders(hosts, memory), key=lambda h: (len(h.layers & wanted), h.memory_free, h.id))


def _pinned(hosts: list[Host], pin: str, memory: int | None) -> Host:
    host = next((h for h in hosts if h.id == pin), None)
    if host is None:
        raise NotFound(f"no such host {pin!r} (see `dockyard agents`)")
    if host.lost:
        raise Unavailable(f"host {pin} is lost: no heartbeat for {host.idle_for:.0f} s")
    if memory and host.memory_free < memory:
        raise Unavailable(f"host {pin} has {host.memory_free // MiB} MiB free, "
                          f"the container asks for {_mib_up(memory)} MiB")
    return host


def _mib_up(n: int) -> int:
    return -(-n // MiB)


# ---- locality -------------------------------------------------------------------------

def locality(image: str, replies: Iterable[ImagesReply]) -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """(the layers of `image` as some host holds it, each host's layers) from the agents' image lists.

    An image no host holds has no known layers: locality then decides nothing.
    """
    try:
        want = Reference.parse(image)
    except InvalidArgument:
        return frozenset(), {}
    held: dict[str, frozenset[str]] = {}
    wanted: frozenset[str] = frozenset()
    for reply in replies:
        held[reply.host] = frozenset(d for rec in reply.images for d in rec.diff_ids)
        for rec in reply.images:
            if not wanted and _names(want, rec.digest, rec.references):
                wanted = frozenset(rec.diff_ids)
    return wanted, held


def _names(want: Reference, digest: str, references: list[str]) -> bool:
    """Does the user's reference name this image? An unqualified one matches in any registry."""
    if want.digest is not None:
        return str(want.digest) == digest
    for text in references:
        try:
            ref = Reference.parse(text)
        except InvalidArgument:
            continue
        if (ref.path == want.path and (ref.tag or DEFAULT_TAG) == (want.tag or DEFAULT_TAG)
                and (want.domain is None or want.domain == ref.domain)):
            return True
    return False


# ---- volumes (issue 12) ----------------------------------------------------------------

def volume_host(names: Iterable[str], holders: dict[str, set[str]]) -> str | None:
    """The one host a container must run on to see its named volumes, None if any would do.

    `holders` maps each volume name to the hosts that have one of that name. A name no
    host has yet is made where the container lands; a name on several hosts decides
    nothing; names that live on different hosts cannot meet in one container.
    """
    pinned: dict[str, str] = {}
    for name in names:
        hosts = holders.get(name, set())
        if len(hosts) == 1:
            pinned[name] = next(iter(hosts))
    if len(set(pinned.values())) > 1:
        shown = ", ".join(f"{n} on {h}" for n, h in sorted(pinned.items()))
        raise InvalidArgument(f"the container's volumes live on different hosts ({shown}): "
                              "they cannot be mounted together")
    return next(iter(pinned.values()), None)
