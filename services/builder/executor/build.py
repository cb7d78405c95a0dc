"""One build: stages in dependency order, each step from the cache or executed, then the image.

Layers are materialised lazily: a step that hits the cache needs no rootfs, so
a fully cached build reads no layer at all; the first miss unpacks (or reuses)
the snapshots of the layers below it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Awaitable, Callable

from shared.buildcontext import ContextIndex, context_ignore, ignored_specials
from shared.errors import InvalidArgument
from shared.layers.diff import write_layer
from shared.messages.builder import BuildWarning, StepReport
from shared.runtime import Runtime
from services.builder.executor import rootfs, scan, users
from services.builder.executor.cache import BuildCache, CacheRecord, base_key, chain
from services.builder.executor.copy import Stager, match_sources, stage_copy
from services.builder.executor.images import LayerRef, Registries, pull_base
from services.builder.executor.leases import Lease
from services.builder.executor.mounts import CacheDirs, step_mounts
from services.builder.executor.run import run_step
from services.builder.executor.store import LocalStore
from services.builder.frontend import BuildArgs, ImageState, dispatch_stage, needed_stages, parse, target_stage
from services.builder.frontend import steps as st
from services.builder.frontend.graph import stage_base, stage_deps
from services.builder.frontend.instructions import Dockerfile, Stage
from services.builder.frontend.lint import Lint

Emit = Callable[..., Awaitable[None]]
HISTORY_COMMENT = "buildkit.dockerfile.v0"
CACHE_MOUNTS = "cache-mounts"  # under the store: RUN --mount=type=cache dirs
ALLOW_INSECURE_ENV = "DOCKYARD_BUILDER_ALLOW_INSECURE"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class StageResult:
    layers: list[LayerRef]
    history: list[dict]
    config: ImageState
    key: str
    base_name: str = ""
    base_digest: str = ""
    stages: list[int] = field(default_factory=list)  # this stage and those it is FROM, base first


@dataclass
class BuildOptions:
    dockerfile: str
    dockerfile_name: str = "Dockerfile"
    dockerfile_path: str = "Dockerfile"  # in the context ("" when it lives outside)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str = ""
    no_cache: bool = False
    secrets: dict[str, bytes] = field(default_factory=dict)
    compression: str = "gzip"
    network: str = "default"
    allow_insecure: bool = False  # RUN --security=insecure (BuildKit's security.insecure entitlement)
    no_cache_filter: frozenset[str] = frozenset()  # stages (names or indexes) built without the cache


class Build:
    def __init__(self, store: LocalStore, runtime: Callable[[], Awaitable[Runtime]], cache: BuildCache,
                 regs: Registries, context: ContextIndex, opts: BuildOptions, emit: Emit,
                 lease: Lease | None, cache_dirs: CacheDirs):
        self.store, self._runtime, self.cache, self.regs = store, runtime, cache, regs
        self.cache_dirs = cache_dirs
        self.lease = lease
        # Local layers (digests and diff_ids) this build reads or will push: a prune keeps them.
        self.in_use: set[str] = set()
        self.ctx, self.opts, self.emit = context, opts, emit
        self.results: dict[int, StageResult] = {}
        self.reports: list[StepReport] = []
        self.warnings: list[BuildWarning] = []
        self._scratch: list[Path] = []
        self.fresh: dict[str, CacheRecord] = {}  # records this build wrote, to name their repository later
        self.step_no = 0
        self.total_steps = 0
        self._tasks: dict[int, asyncio.Future[StageResult]] = {}
        self.imported: dict[str, CacheRecord] = {}  # records from --cache-from, consulted after the KV
        self.used: dict[str, tuple[int, CacheRecord]] = {}  # key -> (stage, record) of every step, for --cache-to
        self._report_order: dict[int, tuple[int, int]] = {}
        root = Path(context.root)
        self.hidden = frozenset(root / rel for rel in ignored_specials(root, opts.dockerfile_path))
        self.context_root = root
        self.ignore = context_ignore(root)

    # -- layers on disk ------------------------------------------------------------

    def path(self, digest: str) -> Path | None:
        p = self.store.blob_path(digest)
        return p if p.exists() else None

    async def fetch(self, layer: LayerRef) -> Path:
        async with self.store.lock("blob:" + layer.digest):
            p = self.store.blob_path(layer.digest)
            if not p.exists():
                client = self.regs.client(layer.registry or self.regs.stack_url)
                await client.fetch_blob_to(layer.repository, layer.digest, str(p))
        return p

    def use(self, layers: list[LayerRef]) -> None:
        for layer in layers:
            self.in_use.update((layer.digest, layer.diff_id))

    async def snapshots(self, layers: list[LayerRef]) -> list[Path]:
        self.use(layers)
        out = []
        for layer in layers:
            if not self.store.has_snapshot(layer.diff_id):
                await self.fetch(layer)
                await self.store.unpack_blob(layer.digest, layer.diff_id)
            out.append(self.store.snapshot_path(layer.diff_id))
        return out

    def scratch(self, prefix: str) -> Path:
        p = self.store.scratch_dir(prefix)
        self._scratch.append(p)
        return p

    def cleanup(self) -> None:
        for p in self._scratch:
            shutil.rmtree(p, ignore_errors=True)

    # -- the build -----------------------------------------------------------------

    async def run(self) -> StageResult:
        """Build the target: each stage a task that waits only for the stages it reads."""
        df, args = self.parse()
        target = target_stage(df, self.opts.target or None)
        order = needed_stages(df, target, args)
        self.total_steps = sum(len(df.stages[i].instructions) + 1 for i in order)
        try:
            await asyncio.gather(*(self.stage(df, i, args) for i in order))
        except BaseException:
            for t in self._tasks.values():
                t.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            raise
        for name in args.unused():
            self.warnings.append(BuildWarning(kind="unused-build-arg",
                                              message=f"build-arg {name} was not consumed by any stage"))
        # Reports in Dockerfile order (stages by index), whatever order the stages ran in.
        self.reports.sort(key=lambda r: self._report_order[id(r)])
        return self.results[target]

    def parse(self) -> tuple[Dockerfile, BuildArgs]:
        df = parse(self.opts.dockerfile, self.opts.dockerfile_name)
        self.warnings += [lint_warning(f) for f in df.lints]
        args = BuildArgs(given=dict(self.opts.build_args))
        args.evaluate_meta(df)
        return df, args

    async def check(self) -> list[BuildWarning]:
        """`--check`: every stage dispatched (bases resolved, nothing run), what the checks found."""
        df, args = self.parse()
        configs: dict[int, ImageState] = {}
        for stage in df.stages:
            base = stage_base(df, stage, args)
            if base.stage is not None:
                config = configs[base.stage].clone()
            elif base.image is not None:
                img = await pull_base(self.regs, base.image, "linux", ImageState.scratch().architecture)
                config = ImageState.from_oci(img.config)
            else:
                config = ImageState.scratch()
            plan = dispatch_stage(df, stage, config, args, self.ignore)
            self.warnings += [lint_warning(f) for f in plan.lints]
            configs[stage.index] = plan.config
        return self.warnings

    def stage(self, df: Dockerfile, i: int, args: BuildArgs) -> asyncio.Future[StageResult]:
        """The (one) task building stage `i`."""
        if i not in self._tasks:
            self._tasks[i] = asyncio.ensure_future(self.build_stage(df, df.stages[i], args))
        return self._tasks[i]

    def next_step(self) -> int:
        self.step_no += 1
        return self.step_no

    async def build_stage(self, df: Dockerfile, stage: Stage, args: BuildArgs) -> StageResult:
        await asyncio.gather(*(self.stage(df, d, args) for d in sorted(stage_deps(df, stage, args))))
        base = stage_base(df, stage, args)
        no = self.next_step()
        if base.stage is not None:
            parent = await self.stage(df, base.stage, args)
            res = StageResult(list(parent.layers), list(parent.history), parent.config.clone(), parent.key,
                              parent.base_name, parent.base_digest, list(parent.stages))
            await self.emit("step", f"FROM stage {base.stage}", no, self.total_steps)
        elif base.image is not None:
            await self.emit("step", f"FROM {base.image}", no, self.total_steps)
            img = await pull_base(self.regs, base.image, "linux", ImageState.scratch().architecture)
            res = StageResult(img.layers, list(img.config.get("history") or []), ImageState.from_oci(img.config),
                              base_key(f"{img.reference.repository}@{img.digest}"),
                              img.reference.familiar(), img.digest)
        else:
            await self.emit("step", "FROM scratch", no, self.total_steps)
            res = StageResult([], [], ImageState.scratch(), base_key("scratch"))
        plan = dispatch_stage(df, stage, res.config, args, self.ignore)
        self.warnings += [lint_warning(f) for f in plan.lints]
        # The base's ONBUILD triggers are only known now: count their steps, and
        # build any stage a trigger's COPY --from names that the graph could not see.
        self.total_steps += len(plan.steps) - len(stage.instructions)
        for step in plan.steps:
            if isinstance(step, st.CopyStep) and step.from_stage is not None:
                if step.from_stage not in self._tasks:
                    self.total_steps += len(df.stages[step.from_stage].instructions) + 1
                await self.stage(df, step.from_stage, args)
        no_cache = self.opts.no_cache or bool({stage.name, str(stage.index)} & self.opts.no_cache_filter)
        for seq, step in enumerate(plan.steps):
            await self.execute(stage.index, step, res, self.next_step(), (stage.index, seq), no_cache)
        res.config = plan.config
        res.stages.append(stage.index)
        self.results[stage.index] = res
        return res

    async def execute(self, stage: int, step: st.Step, res: StageResult, no: int, order: tuple[int, int],
                      no_cache: bool) -> None:
        created = now_rfc3339()
        label = f"[stage {stage}] {step.created_by.removesuffix(' # buildkit')}"
        if isinstance(step, st.ConfigStep):
            res.history.append({"created": created, "created_by": step.created_by,
                                "comment": HISTORY_COMMENT, "empty_layer": True})
            return
        if isinstance(step, st.RunStep) and step.security == "insecure" and not self.opts.allow_insecure:
            raise InvalidArgument(f"{step.src.where('RUN')}: RUN --security=insecure is not allowed: the builder "
                                  f"must be started with {ALLOW_INSECURE_ENV}=1 (BuildKit's security.insecure)")
        t0 = time.monotonic()
        key = chain(res.key, step.cache_text, self.contents_digest(step), self.opts.compression)
        rec = None
        if not no_cache:
            if self.lease is not None:
                await self.lease.add(key)  # before the lookup: see leases.py
            rec = await self.usable(await self.cache.get(key) or self.imported.get(key))
        cached = rec is not None
        await self.emit("step", ("CACHED " if cached else "") + label, no, self.total_steps)
        if rec is None:
            rec = await self.make_layer(step, res, no)
            if not self.opts.no_cache:  # a --no-cache-filter stage still leaves its records
                await self.cache.put(key, rec)
                self.fresh[key] = rec
        res.key = key
        self.used[key] = (stage, rec)
        layer = None
        if not rec.empty:
            assert rec.digest is not None and rec.diff_id is not None
            layer = LayerRef(digest=rec.digest, size=rec.size, media_type=rec.media_type, diff_id=rec.diff_id,
                             index=rec.index, repository=rec.repository, registry=self.regs.stack_url)
            res.layers.append(layer)
            self.use([layer])
        entry = {"created": rec.created or created, "created_by": step.created_by, "comment": HISTORY_COMMENT}
        if rec.empty:
            entry["empty_layer"] = True
        res.history.append(entry)
        report = StepReport(stage=stage, instruction=step.created_by, cached=cached,
                            layer=layer.digest if layer else None, size=rec.size,
                            seconds=round(time.monotonic() - t0, 3))
        self._report_order[id(report)] = order
        self.reports.append(report)

    async def usable(self, rec: CacheRecord | None) -> CacheRecord | None:
        """A hit is only a hit if its layer can still be had (here, or in the stack registry)."""
        if rec is None or rec.empty:
            return rec
        self.in_use.update(str(d) for d in (rec.digest, rec.diff_id) if d)  # before any await
        if self.store.has_blob(rec.digest) or self.store.has_snapshot(rec.diff_id) and self.store.has_blob(rec.digest):
            return rec
        if rec.repository and await self.regs.client(self.regs.stack_url).blob_exists(rec.repository, rec.digest) is not None:
            return rec
        return None

    def contents_digest(self, step: st.Step) -> str:
        """Digest of what a step reads besides its parent: a COPY's sources, a RUN's bind mounts."""
        if isinstance(step, st.CopyStep):
            return self.sources_digest(step.from_stage, step.from_image, step.sources, step.src.where(step.name))
        if isinstance(step, st.RunStep):
            return ",".join(self.sources_digest(m.from_stage, m.from_image, (m.source,), step.src.where("RUN"))
                            for m in step.mounts if m.type == "bind")
        return ""

    def identity_of(self, stage: int | None, image: str | None) -> str:
        """What stands for the contents of a stage (its chain key) or an image."""
        return "stage:" + self.results[stage].key if stage is not None else "image:" + (image or "")

    async def lowers_of(self, stage: int | None, image: str | None) -> list[Path]:
        """The snapshots (bottom first) of a stage's result or of an image."""
        if stage is not None:
            return await self.snapshots(self.results[stage].layers)
        img = await pull_base(self.regs, image or "", "linux", ImageState.scratch().architecture)
        return await self.snapshots(img.layers)

    def sources_digest(self, stage: int | None, image: str | None, sources: tuple[str, ...], where: str) -> str:
        """File digests of `sources` in the context, or the identity of the stage or image they are in."""
        if stage is not None or image is not None:
            return self.identity_of(stage, image)
        h = hashlib.sha256()
        root = Path(self.ctx.root)
        for pattern in sources:
            for name, path in match_sources(root, pattern, where, self.hidden):
                rel = str(path.relative_to(root)) if path != root else ""
                prefix = rel + "/" if rel else ""
                for f, d in sorted(self.ctx.files.items()):
                    if (f == rel or f.startswith(prefix)) and root / f not in self.hidden:
                        h.update(f"{f}\0{d}\0".encode())
                for f, t in sorted(self.ctx.links.items()):
                    if f == rel or f.startswith(prefix):
                        h.update(f"{f}\0->{t}\0".encode())
                for f in sorted(self.ctx.dirs):
                    if f == rel or f.startswith(prefix):
                        h.update(f"{f}/\0".encode())
        return h.hexdigest()

    async def make_layer(self, step: st.Step, res: StageResult, no: int) -> CacheRecord:
        lowers = await self.snapshots(res.layers)
        scratch = self.scratch("step-")
        where = step.src.where(type(step).__name__)
        if isinstance(step, st.RunStep):
            runtime = await self._runtime()
            network = step.network if step.network != "default" else self.opts.network

            async def out(stream: str, line: bytes) -> None:
                await self.emit("output", line.decode(errors="replace").rstrip("\n"), no,
                                self.total_steps, stream=stream)

            async with contextlib.AsyncExitStack() as stack:
                binds = await step_mounts(step, self, self.cache_dirs, stack, scratch)
                tree = await run_step(runtime, lowers, step, scratch, secrets=self.opts.secrets,
                                      network=network, on_output=out, binds=binds,
                                      insecure=step.security == "insecure")
        elif isinstance(step, st.CopyStep):
            tree = scratch / "staged"
            tree.mkdir()
            await self.stage_copy(step, lowers, tree, scratch)
        elif isinstance(step, st.WorkdirStep):
            tree = scratch / "staged"
            tree.mkdir()
            path = rootfs.resolve(lowers, step.path)
            if rootfs.lookup(lowers, path) is None:
                Stager(tree, lowers, 0, 0, None, False).ensure_dir(path)
        else:
            raise InvalidArgument(f"{where}: cannot execute {type(step).__name__}")
        return await self.commit(tree)

    async def stage_copy(self, step: st.CopyStep, lowers: list[Path], tree: Path, scratch: Path) -> None:
        uid = gid = 0
        if step.chown:
            where = f"{step.src.where(step.name)}: --chown: "
            if users.needs_db(step.chown):
                with rootfs.readonly(lowers, self.scratch("users-")) as view:
                    uid, gid = users.resolve_chown(view, step.chown, where)
            else:
                uid, gid = users.resolve_chown(None, step.chown, where)
        if step.from_context:
            await asyncio.to_thread(stage_copy, step, Path(self.ctx.root), lowers, tree, uid, gid, link_ok=True,
                                    hidden=self.hidden)
            return
        src_lowers = await self.lowers_of(step.from_stage, step.from_image)
        with rootfs.readonly(src_lowers, self.scratch("from-")) as view:
            await asyncio.to_thread(stage_copy, step, view, lowers, tree, uid, gid, link_ok=False)

    async def commit(self, tree: Path) -> CacheRecord:
        """The tree as a layer: blob and snapshot stored, indexed; or an empty record."""
        if not any(tree.iterdir()):
            return CacheRecord(empty=True, created=now_rfc3339())
        tmp = self.store.work / f"blob-{tree.parent.name}"

        def write():
            with open(tmp, "wb") as f:
                r = write_layer(tree, f, compression=self.opts.compression)
                f.flush()
            return r

        result = await asyncio.to_thread(write)
        self.in_use.update((result.digest, result.diff_id))
        self.store.adopt_blob(tmp, result.digest)
        snap = self.store.adopt_snapshot(tree, result.diff_id)
        index = await asyncio.to_thread(scan.index_snapshot, snap)
        return CacheRecord(digest=result.digest, size=result.size, media_type=result.media_type,
                           diff_id=result.diff_id, created=now_rfc3339(), index=index)


async def layer_index(build: Build, layer: LayerRef) -> scan.LayerIndex | None:
    """The index of a layer: from its record, its local snapshot, or None if it is remote."""
    if layer.index is not None:
        return layer.index
    if build.store.has_snapshot(layer.diff_id):
        layer.index = await asyncio.to_thread(scan.index_snapshot, build.store.snapshot_path(layer.diff_id))
    return layer.index


def lint_warning(f: Lint) -> BuildWarning:
    return BuildWarning(kind="lint", rule=f.rule.name, url=f.rule.url, file=f.file, line=f.line, message=f.message)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} B"


async def check_image(build: Build, res: StageResult) -> list[BuildWarning]:
    """Secrets in any layer, and bytes a later layer hides but an earlier one still ships."""
    warnings: list[BuildWarning] = []
    indexes = [await layer_index(build, layer) or scan.LayerIndex(files={}, whiteouts=[], opaque=[], secrets=[])
               for layer in res.layers]
    steps = [h.get("created_by", "") for h in res.history if not h.get("empty_layer")]
    steps = steps[-len(res.layers):] if len(steps) >= len(res.layers) else [""] * len(res.layers)
    for i, idx in enumerate(indexes):
        for f in idx.secrets:
            warnings.append(BuildWarning(kind="secret", layer=i, path=f.path, size=f.size,
                                         message=f"layer {i} ({steps[i][:60]}) ships {f.path}: {f.reason}"))
    for w in scan.analyse(indexes):
        if w.size >= scan.WASTE_WARN:
            warnings.append(BuildWarning(
                kind="wasted-bytes", layer=w.shipped_in, path=w.path, size=w.size,
                message=(f"layer {w.layer} ({steps[w.layer][:60]}) {w.how} {w.path}, but layer {w.shipped_in} "
                         f"still ships its {_mb(w.size)}")))
    return warnings
