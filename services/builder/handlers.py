"""The builder's verbs: build, import, history (the bus adapter is service.py)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgspec

from shared.buildcontext import ContextIndex, unpack_context
from shared.errors import InvalidArgument
from shared.layers.compression import open_compressor, open_decompressed, media_type
from shared.messages.builder import (CACHE_REPOSITORY, CONTEXT_REPOSITORY, BuildReply, BuildRequest, CachePruned,
                                     CheckReply, ContextMissingReply, ContextMissingRequest, HistoryEntry,
                                     HistoryReply, HistoryRequest, ImportReply, ImportRequest)
from shared.messages.common import Progress
from shared.messages.gc import PruneReply, PruneRequest
from shared.oci.digest import Digest, Hasher
from shared.runtime import Runtime
from services.builder.executor import prune, remotecache, scan
from services.builder.executor.build import CACHE_MOUNTS, Build, BuildOptions, StageResult, check_image, now_rfc3339
from services.builder.executor.cache import BuildCache
from services.builder.executor.images import (LayerRef, Registries, canonical, image_manifest, parse_name,
                                              pull_base, push_image)
from services.builder.executor.leases import Leases
from services.builder.executor.mounts import CacheDir, CacheDirs
from services.builder.executor.store import LocalStore
from services.builder.frontend import ImageState
from services.builder.frontend.imagestate import DEFAULT_SHELL

Publish = Callable[[str, Progress], Awaitable[None]]
Announce = Callable[[CachePruned], Awaitable[None]]
RUNTIME_STATE_ROOT = Path("/run/dybd")
MAX_CONTEXTS = 4  # unpacked contexts kept for warm rebuilds
UNTAGGED_REPOSITORY = "dockyard/untagged"


class Builder:
    def __init__(self, store: LocalStore, cache: BuildCache, regs: Registries, publish: Publish,
                 leases: Leases | None = None, announce: Announce | None = None, *, allow_insecure: bool = False):
        self.store, self.cache, self.regs, self.publish = store, cache, regs, publish
        self.allow_insecure = allow_insecure  # RUN --security=insecure may run
        self.cache_dirs = CacheDirs(store.root / CACHE_MOUNTS)
        self.leases = leases or Leases(None)
        self.announce = announce  # tells the other replicas what a prune dropped
        self.active: set[Build] = set()
        self._runtime: Runtime | None = None
        self._runtime_lock = asyncio.Lock()
        self.contexts = store.root / "contexts"
        self.contexts.mkdir(exist_ok=True)

    @property
    def runtime_state(self) -> Path:
        """The runtime's state for RUN containers: in /run (gone on reboot), one dir per store."""
        return RUNTIME_STATE_ROOT / Digest.from_bytes(str(self.store.root).encode()).hex[:12]

    async def runtime(self) -> Runtime:
        async with self._runtime_lock:
            if self._runtime is None:
                self._runtime = await Runtime.probe(self.runtime_state)
            return self._runtime

    def close(self) -> None:
        """Remove the runtime state dirs (every RUN container is gone by now: they run in the foreground)."""
        if self._runtime is None:
            return
        # rmdir, never rmtree: a dir that still holds something is a container we must not forget.
        for d in (self._runtime.runtime_root, self._runtime.containers_dir, self.runtime_state,
                  RUNTIME_STATE_ROOT):
            try:
                os.rmdir(d)
            except OSError:
                pass
        self._runtime = None

    # -- contexts ------------------------------------------------------------------

    async def context(self, digest: Digest) -> ContextIndex:
        """The unpacked context, fetched and unpacked once per digest (kept for rebuilds)."""
        digest = Digest(digest)
        async with self.store.lock("ctx:" + digest):
            dest = self.contexts / digest.hex
            meta = self.contexts / f"{digest.hex}.json"
            if dest.is_dir() and meta.exists():
                os.utime(meta)
                return msgspec.json.decode(meta.read_bytes(), type=ContextIndex)
            tmp = self.store.scratch_dir("ctx-")
            try:
                blob = tmp / "context.tar"
                await self.regs.client(self.regs.stack_url).fetch_blob_to(CONTEXT_REPOSITORY, digest, str(blob))

                def unpack() -> ContextIndex:
                    with open(blob, "rb") as f:
                        return unpack_context(f, str(tmp / "root"), donor=self._donor())

                index = await asyncio.to_thread(unpack)
                await self._place_external(index, tmp / "root")
                os.replace(tmp / "root", dest)
                index.root = str(dest)
                meta.write_bytes(msgspec.json.encode(index))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._evict_contexts()
            return index

    def _donor(self) -> ContextIndex | None:
        """The context used last: a rebuild's new context mostly holds the same files (see unpack_context)."""
        metas = []
        for m in self.contexts.glob("*.json"):
            try:
                metas.append((m.stat().st_mtime_ns, m))
            except OSError:
                pass  # evicted meanwhile
        for _, meta in sorted(metas, reverse=True)[:1]:
            try:
                index = msgspec.json.decode(meta.read_bytes(), type=ContextIndex)
            except (OSError, msgspec.ValidationError, msgspec.DecodeError):
                return None
            if index.root == str(self.contexts / meta.stem):  # only contexts this builder unpacked
                return index
        return None

    async def context_missing(self, req: ContextMissingRequest) -> ContextMissingReply:
        """The blobs of `req` the stack registry lacks (asked there, not here: any replica may build)."""
        if len(req.digests) > 1024:
            raise InvalidArgument("context_missing: at most 1024 digests a request")
        client = self.regs.client(self.regs.stack_url)
        digests = [Digest(d) for d in req.digests]
        sizes = await asyncio.gather(*(client.blob_exists(CONTEXT_REPOSITORY, d) for d in digests))
        return ContextMissingReply(missing=[d for d, n in zip(digests, sizes) if n is None])

    async def _place_external(self, index: ContextIndex, root: Path) -> None:
        """Put the context's big files in place: each fetched once per digest, then hard-linked."""
        files = self.contexts / "files"
        files.mkdir(exist_ok=True)
        client = self.regs.client(self.regs.stack_url)

        async def one(rel: str, digest: str, size: int, mode: int) -> None:
            cached = files / f"{Digest(digest).hex}-{mode:o}"  # a link shares its mode: one per mode
            async with self.store.lock("ctxfile:" + cached.name):
                if not cached.exists():
                    got = await client.fetch_blob_to(CONTEXT_REPOSITORY, Digest(digest), str(cached))
                    if got != size:
                        cached.unlink(missing_ok=True)
                        raise InvalidArgument(f"context: {rel}: blob {digest} has {got} bytes, not {size}")
                    os.chmod(cached, mode)
            os.link(cached, root / rel)

        await asyncio.gather(*(one(rel, *e) for rel, e in index.external.items()))
        index.external = {}

    def _evict_contexts(self) -> None:
        metas = sorted(self.contexts.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in metas[MAX_CONTEXTS:]:
            shutil.rmtree(self.contexts / old.stem, ignore_errors=True)
            old.unlink(missing_ok=True)
        for f in (self.contexts / "files").glob("*"):
            if f.stat().st_nlink == 1:  # no kept context links it any more
                f.unlink(missing_ok=True)

    # -- build ---------------------------------------------------------------------

    async def _inputs(self, req: BuildRequest) -> tuple[ContextIndex, BuildOptions]:
        """The unpacked context and the options of a build request, checked."""
        if req.compression not in ("gzip", "zstd"):
            raise InvalidArgument(f"--compression must be gzip or zstd, not {req.compression!r}")
        if req.network not in ("default", "none", "host"):
            raise InvalidArgument(f"--network must be default, none or host, not {req.network!r}")
        ctx = await self.context(req.context)
        opts = BuildOptions(dockerfile=req.dockerfile, dockerfile_name=req.dockerfile_name,
                            dockerfile_path=req.dockerfile_path,
                            build_args=dict(req.build_args), target=req.target, no_cache=req.no_cache,
                            secrets={s.id: s.data for s in req.secrets}, compression=req.compression,
                            network=req.network, allow_insecure=self.allow_insecure,
                            no_cache_filter=frozenset(req.no_cache_filter))
        return ctx, opts

    async def check(self, req: BuildRequest) -> CheckReply:
        """`build --check`: every stage dispatched against its base, nothing run or pushed."""
        async def quiet(*_a, **_k) -> None:
            pass

        ctx, opts = await self._inputs(req)
        b = Build(self.store, self.runtime, self.cache, self.regs, ctx, opts, quiet, None, self.cache_dirs)
        try:
            return CheckReply(warnings=await b.check())
        finally:
            b.cleanup()

    async def build(self, req: BuildRequest) -> BuildReply:
        inbox = req.progress_inbox

        async def emit(kind: str, message: str, step: int = 0, total: int = 0, stream: str = "") -> None:
            await self.publish(inbox, Progress(kind=kind, message=message, step=step, total_steps=total,
                                               stream=stream))

        tags = [parse_name(t) for t in req.tags]
        ctx, opts = await self._inputs(req)
        lease = self.leases.lease()
        b = Build(self.store, self.runtime, self.cache, self.regs, ctx, opts, emit, lease, self.cache_dirs)
        self.active.add(b)
        try:
            cache_to = [remotecache.parse_spec(t, "--cache-to") for t in req.cache_to]
            for spec in (remotecache.parse_spec(t, "--cache-from") for t in req.cache_from):
                b.imported.update(await remotecache.load(self.regs, spec))
            res = await b.run()
            inline = any(spec.type == "inline" for spec in cache_to)
            config_bytes, manifest_bytes = compose(res, req.labels, remotecache.inline_config(
                {k: rec for k, (stage, rec) in b.used.items() if stage in res.stages}) if inline else None)
            if not tags:
                tags = [parse_name(f"{UNTAGGED_REPOSITORY}@{Digest.from_bytes(manifest_bytes)}")]
            await emit("log", f"pushing {', '.join(str(t) for t in tags)}")
            digest = await push_image(self.regs, tags, res.layers, b, config_bytes, manifest_bytes)
            stack_repo = next((t.path for t in tags if t.domain is None), "")
            shipped = {layer.digest for layer in res.layers}
            stack = self.regs.client(self.regs.stack_url)
            stored = {}
            for key, rec in b.fresh.items():
                if rec.empty or rec.digest is None:
                    continue
                repo = stack_repo
                if rec.digest not in shipped or not repo:
                    # Layers of intermediate stages go to a cache repository, so that
                    # other replicas can hit them too.
                    repo = CACHE_REPOSITORY
                    await stack.push_blob(repo, rec.digest, rec.size, str(self.store.blob_path(rec.digest)))
                stored[key] = msgspec.structs.replace(rec, repository=repo)
                await self.cache.put(key, stored[key])
            for spec in cache_to:
                if spec.type == "registry":
                    await emit("log", f"exporting cache to {spec.ref} (mode={spec.mode})")
                    await remotecache.export(self.regs, spec, {
                        k: stored.get(k, rec) for k, (stage, rec) in b.used.items()
                        if spec.mode == "max" or stage in res.stages}, b)
            warnings = b.warnings + await check_image(b, res)
            for w in warnings:
                # A check as BuildKit lists it after a build: " - Rule: message (line N)".
                await emit("warning", f"{w.rule}: {w.message} (line {w.line})" if w.kind == "lint" else w.message)
        finally:
            self.active.discard(b)
            b.cleanup()
            await lease.release()
        return BuildReply(digest=digest, config_digest=Digest.from_bytes(config_bytes),
                          tags=[str(t) for t in tags], size=sum(layer.size for layer in res.layers),
                          media_type=json.loads(manifest_bytes)["mediaType"], manifest_size=len(manifest_bytes),
                          warnings=warnings, steps=b.reports)

    # -- prune ---------------------------------------------------------------------

    def layers_in_use(self) -> set[str]:
        return set().union(*(b.in_use for b in self.active))

    async def prune(self, req: PruneRequest) -> PruneReply:
        """Drop cache records by age and LRU budget, then the layers only they held (see prune.py)."""
        if req.max_age_seconds is not None and req.max_age_seconds < 0:
            raise InvalidArgument("max_age_seconds must be >= 0")
        if req.max_bytes is not None and req.max_bytes < 0:
            raise InvalidArgument("max_bytes must be >= 0")
        entries = await self.cache.entries()
        leased = await self.leases.leased_keys()
        plan = prune.plan(entries, now=time.time(), max_age=req.max_age_seconds, max_bytes=req.max_bytes,
                          leased=leased)
        caches = await asyncio.to_thread(self.cache_dirs.plan, now=time.time(), max_age=req.max_age_seconds,
                                         max_bytes=req.max_bytes)
        if req.dry_run:
            return _with_caches(PruneReply(examined=len(entries), removed=len(plan.remove), freed=plan.freed,
                                           items=[e.item for e in plan.remove]), caches)
        caches = self.cache_dirs.remove(caches)
        await asyncio.to_thread(self.cache_dirs.purge)
        removed = [e for e in plan.remove if await self.cache.remove(e)]
        # A build that leased a key after the first read may have hit its record: put it back.
        late = await self.leases.leased_keys()
        for e in removed:
            if e.key in late:
                await self.cache.restore(e)
        done = prune.Plan(remove=[e for e in removed if e.key not in late],
                          keep=plan.keep + [e for e in plan.remove if e not in removed or e.key in late])
        freed = done.freed_layers()
        await self.drop_local({d: diff for d, (diff, _) in freed.items()})
        if freed and self.announce is not None:
            await self.announce(CachePruned(layers=[Digest(d) for d in freed],
                                            diff_ids=[diff for diff, _ in freed.values()]))
        return _with_caches(PruneReply(examined=len(entries), removed=len(done.remove), freed=done.freed,
                                       items=[e.item for e in done.remove]), caches)

    async def drop_local(self, layers: dict[str, str]) -> int:
        """Remove this replica's copies of `layers` (digest -> diff_id) that no running build uses."""
        if not layers:
            return 0
        trash = prune.trash_local(self.store, layers, self.layers_in_use())
        return await asyncio.to_thread(prune.empty_trash, trash)

    async def on_pruned(self, ev: CachePruned) -> None:
        """Another replica pruned: drop local copies of what it freed."""
        await self.drop_local({str(d): diff for d, diff in zip(ev.layers, ev.diff_ids)})

    # -- import --------------------------------------------------------------------

    async def import_image(self, req: ImportRequest) -> ImportReply:
        ref = parse_name(req.tag)
        tmp = self.store.scratch_dir("import-")
        try:
            src = tmp / "rootfs"
            await self.regs.client(self.regs.stack_url).fetch_blob_to(CONTEXT_REPOSITORY, req.source, str(src))
            blob = tmp / "layer"

            def recompress() -> tuple[Digest, Digest, int]:
                diff, comp = Hasher(), Hasher()

                class Sink:
                    def write(self, b):
                        comp.update(b)
                        out.write(b)
                        return len(b)

                    def flush(self):
                        out.flush()

                with open(src, "rb") as f, open(blob, "wb") as out:
                    _, plain = open_decompressed(f)
                    w = open_compressor(Sink(), req.compression)  # type: ignore[arg-type]
                    while chunk := plain.read(1 << 20):
                        diff.update(chunk)
                        w.write(chunk)
                    w.close()
                return comp.digest(), diff.digest(), comp.size

            digest, diff_id, size = await asyncio.to_thread(recompress)
            self.store.adopt_blob(blob, digest)
            layer = LayerRef(digest=digest, size=size, media_type=media_type(req.compression), diff_id=diff_id)
            state = ImageState.scratch()
            if req.changes:
                from services.builder.frontend import BuildArgs, dispatch_stage, parse
                df = parse("FROM scratch\n" + "\n".join(req.changes) + "\n", "--change")
                args = BuildArgs(given={})
                args.evaluate_meta(df)
                state = dispatch_stage(df, df.stages[0], state, args).config
            history = [{"created": now_rfc3339(), "created_by": "dockyard import",
                        "comment": req.message or "Imported from -"}]
            res = StageResult([layer], history, state, key="")
            config_bytes, manifest_bytes = compose(res, {})
            blobs = _LocalOnly(self.store)
            d = await push_image(self.regs, [ref], [layer], blobs, config_bytes, manifest_bytes)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return ImportReply(digest=d, config_digest=Digest.from_bytes(config_bytes), tag=str(ref), size=size)

    # -- history -------------------------------------------------------------------

    async def history(self, req: HistoryRequest) -> HistoryReply:
        ref = parse_name(req.image)
        client = self.regs.client(self.regs.url_for(ref))
        img = await pull_base(self.regs, req.image, "linux", ImageState.scratch().architecture)
        indexes: list[scan.LayerIndex] = []
        for layer in img.layers:
            if self.store.has_snapshot(layer.diff_id):
                indexes.append(await asyncio.to_thread(scan.index_snapshot, self.store.snapshot_path(layer.diff_id)))
                continue
            buf = self.store.work / f"hist-{layer.digest.hex[:16]}"
            try:
                await client.fetch_blob_to(ref.path, layer.digest, str(buf))

                def index() -> scan.LayerIndex:
                    with open(buf, "rb") as f:
                        _, plain = open_decompressed(f)
                        return scan.index_tar(io.BufferedReader(plain))  # type: ignore[arg-type]

                indexes.append(await asyncio.to_thread(index))
            finally:
                buf.unlink(missing_ok=True)
        wasted = [0] * len(indexes)
        for w in scan.analyse(indexes):
            wasted[w.layer] += w.size
        entries: list[HistoryEntry] = []
        li = 0
        for h in img.config.get("history") or []:
            empty = bool(h.get("empty_layer"))
            layer = None if empty or li >= len(img.layers) else img.layers[li]
            entries.append(HistoryEntry(created=h.get("created", ""), created_by=h.get("created_by", ""),
                                        comment=h.get("comment", ""), empty_layer=empty,
                                        layer=layer.digest if layer else None,
                                        size=indexes[li].size if layer else 0,
                                        wasted=wasted[li] if layer else 0))
            if layer is not None:
                li += 1
        return HistoryReply(image=str(ref), digest=img.digest, entries=list(reversed(entries)))


def _with_caches(reply: PruneReply, caches: list[CacheDir]) -> PruneReply:
    """A prune's reply counting the cache mounts it dropped (or would drop) too."""
    reply.examined += len(caches)
    reply.removed += len(caches)
    reply.freed += sum(c.size for c in caches)
    reply.items += [f"cache-mount {c.name[:16]} {c.size}" for c in caches]
    return reply


class _LocalOnly:
    def __init__(self, store: LocalStore):
        self.store = store

    def path(self, digest: str) -> Path | None:
        p = self.store.blob_path(digest)
        return p if p.exists() else None

    async def fetch(self, layer: LayerRef) -> Path:
        raise InvalidArgument(f"layer {layer.digest} is not in this builder")


def compose(res: StageResult, extra_labels: dict[str, str],
            extra: dict[str, Any] | None = None) -> tuple[bytes, bytes]:
    """The OCI image config and manifest of a finished stage; `extra`: more config keys (an inline cache)."""
    cfg = res.config
    if extra_labels:
        cfg.labels.update(extra_labels)
    created = now_rfc3339()
    doc: dict[str, Any] = {"created": created}
    if cfg.author:
        doc["author"] = cfg.author
    doc.update({"architecture": cfg.architecture, "os": cfg.os})
    if cfg.variant:
        doc["variant"] = cfg.variant
    oci_config = cfg.to_oci_config()
    if oci_config.get("Shell") == list(DEFAULT_SHELL):
        oci_config.pop("Shell")
    doc["config"] = oci_config
    doc["rootfs"] = {"type": "layers", "diff_ids": [str(layer.diff_id) for layer in res.layers]}
    doc["history"] = res.history
    doc.update(extra or {})
    config_bytes = canonical(doc)
    annotations = {"org.opencontainers.image.created": created}
    if res.base_name:
        annotations["org.opencontainers.image.base.name"] = res.base_name
        annotations["org.opencontainers.image.base.digest"] = str(res.base_digest)
    for key in ("org.opencontainers.image.title", "org.opencontainers.image.version",
                "org.opencontainers.image.source", "org.opencontainers.image.revision",
                "org.opencontainers.image.authors", "org.opencontainers.image.description"):
        if key in cfg.labels:
            annotations[key] = cfg.labels[key]
    return config_bytes, image_manifest(config_bytes, res.layers, annotations)
