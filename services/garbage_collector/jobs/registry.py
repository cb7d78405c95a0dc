"""Online mark and sweep of the layer-store's blobs.

1. Record T0 and list the layer-store's blobs.
2. At `T0 + settle`, read every manifest link of the registry metadata and the build
   cache's records (a cached layer is a root until the build-cache job drops it, like a
   containerd lease), and mark from them.
3. An unmarked blob last committed or touched before `fence = T0 - grace` is deleted with
   `unless_touched_since = fence`: the layer-store refuses (Conflict) if a push committed
   or touched it since, and serialises that check with touches of the same digest.
Pushes and pulls go on throughout; nothing is made read-only.

Why a manifest push racing a run never ends with a link to deleted blobs, for any grace
and with no settle wait (the gateway's side is `Registry._commit_link`):
- The gateway touches the blobs (and child manifests), stores the body, writes the link,
  and only then touches every blob the link makes us mark once more ("re-touch").
- If our snapshot holds the link, its blobs are marked: nothing of it is swept.
- If it does not, the link's KV write was sequenced after our snapshot's read began
  (`kvscan` delivers every key's last value as of its subscription), which is after T0;
  the re-touch follows the write's acknowledgement, so it records `touched_at > T0 >=
  fence`. Touch and delete of a digest are serialised by the layer-store: if the re-touch
  comes first, our delete is refused; if our delete comes first, the re-touch finds no
  blob, the gateway withdraws the link (CAS) and the push fails with MANIFEST_BLOB_UNKNOWN.
  The push's own first touch is not needed for this; it makes a missing or wrong-sized
  blob fail early, and covers a gateway that dies between link write and re-touch as
  long as that took less than `grace`.
- An index's children keep their layers through their own links, which the push bumps
  after writing the index link: the untagged job cannot delete them at the revision it
  read, or it did and the push fails (RegistryMeta's bump protocol).
So `settle`, which used to bridge the gap between a push's first touch and its link write
(a push whose touch predated T0 had to be visible by the time we read), is not needed for
manifests and 0 is a safe default (`Settings.settle`, DOCKYARD_GC_SETTLE). It stays a
setting for what a tiny grace leaves uncovered and the re-touch does not: references
written by others than the gateway after the bytes they name, such as a build cache
record written after its layer was committed. With the default grace (1 h) those
are held by their commit time; settle only ever widened that window by a few seconds.
Clocks: `fence` is this process's clock, `touched_at` the layer-store's; grace must exceed
their skew (with grace 0, both must share a host clock, as in the tests).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from shared import subjects
from shared.errors import Conflict, NotFound
from shared.messages.gc import JobReport
from shared.messages.layer_store import (BlobInfo, DeleteReply, DeleteRequest, ListReply,
                                         ListRequest)
from shared.oci.digest import Digest
from services.garbage_collector import kvscan, snapshot
from services.garbage_collector.jobs import JobContext, Options
from services.garbage_collector.mark import all_roots, mark

log = logging.getLogger("dockyard.gc.registry")
PAGE = 1000


async def list_blobs(ctx: JobContext) -> list[BlobInfo]:
    out: list[BlobInfo] = []
    after = ""
    while True:
        page = await ctx.bus.request(subjects.BLOB_LIST, ListRequest(after=after, limit=PAGE),
                                     ListReply, timeout=30)
        out.extend(page.blobs)
        if not page.next:
            return out
        after = page.next


class _CacheRef(msgspec.Struct):
    """The one field of a build-cache record the GC reads (the builder owns the record)."""

    digest: str | None = None


async def cached_layers(ctx: JobContext) -> set[str]:
    return {ref.digest for _, ref, _ in await kvscan.scan(ctx.nc, subjects.KV_BUILD_CACHE, _CacheRef)
            if ref.digest}


async def run(ctx: JobContext, opts: Options, report: JobReport) -> None:
    t0 = ctx.clock()
    fence = t0 - opts.grace
    blobs = await list_blobs(ctx)  # anything committed later is after the fence anyway
    if opts.settle > 0:
        await asyncio.sleep(max(0.0, t0 + opts.settle - ctx.clock()))
    snap = await snapshot.load(ctx.nc, ctx.settings.registry_suffix)
    marked = mark(snap.graph, all_roots(snap.graph)).blobs
    marked |= await cached_layers(ctx)
    report.examined = len(blobs)
    candidates = []
    for b in blobs:
        if b.digest in marked:
            continue
        if max(b.committed_at, b.touched_at) >= fence:
            report.kept += 1  # recent: an upload or a push may be about to reference it
            continue
        candidates.append(b)

    sem = asyncio.Semaphore(ctx.settings.delete_concurrency)
    removed: list[tuple[Digest, int]] = []

    async def sweep(b: BlobInfo) -> None:
        async with sem:
            try:
                rep = await ctx.bus.request(
                    subjects.BLOB_DELETE,
                    DeleteRequest(digest=b.digest, unless_touched_since=fence, dry_run=opts.dry_run),
                    DeleteReply, timeout=30)
            except Conflict:
                report.kept += 1  # touched by a push since T0 - grace: it stays
                return
            except NotFound:
                return  # another run (or replica) got it first
            if not rep.deleted and not opts.dry_run:  # a dry run's reply says deleted=False
                report.kept += 1
                return
            removed.append((b.digest, rep.freed or b.size))
            if not opts.dry_run:
                await _unlink(ctx, b.digest)

    await asyncio.gather(*(sweep(b) for b in candidates))
    removed.sort()
    report.removed = len(removed)
    report.freed = sum(size for _, size in removed)
    report.items = [str(d) for d, _ in removed]


async def _unlink(ctx: JobContext, digest: Digest) -> None:
    """Forget the repositories' links to a deleted blob (they would only 404 now)."""
    for repo in await ctx.meta.repositories_with_blob(digest):
        await ctx.meta.unlink_blob(repo, digest)
