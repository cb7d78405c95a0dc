"""The load: N clients for a duration, each picking push, pull, tag list or manifest HEAD.

Pushes build an image of 1-3 layers (1-20 MB each): a config of its own, a unique layer,
and often one of a small pool of shared layers, which is checked with HEAD and mounted
from a repository that has it, else uploaded (so several clients may upload the same blob
at once). Blobs go up in one of three ways: monolithic (POST, then PUT with the body),
chunked (PATCHes with Content-Range, then PUT) or streamed (one PATCH, chunked transfer
encoding, as docker and skopeo send it). Pulls fetch a pushed image by tag and verify
every digest and size. After the run, `verify_all` pulls every pushed image back.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from bench.loadgen.client import LoadError, RegistryClient
from bench.loadgen.content import OCI_MANIFEST, Image, Layer, make_config, random_size
from bench.loadgen.stats import Stats

PUSH, PULL, TAGS, HEAD = "push", "pull", "tags", "head"
DEFAULT_MIX = {PUSH: 0.25, PULL: 0.25, TAGS: 0.25, HEAD: 0.25}
CHUNK = 5 << 20  # chunked uploads: PATCHes of this many bytes
ACCEPT = ", ".join([OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"])


@dataclass
class LoadConfig:
    base_url: str
    creds: tuple[str, str] | None = None
    clients: int = 50
    duration: float = 60.0
    repos: int = 8
    shared_layers: int = 6
    max_layer_mb: float = 20.0
    min_layer_mb: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    seed: int = 0  # 0: a new run every time (layers no registry has seen)
    request_timeout: float = 300.0  # a hang guard per request, not a speed requirement
    prefix: str = "load"


@dataclass
class LoadResult:
    stats: Stats
    images: list[Image]


class Workload:
    def __init__(self, cfg: LoadConfig):
        self.cfg = cfg
        self.run_id = cfg.seed or random.SystemRandom().randrange(1, 1 << 30)
        rng = random.Random(self.run_id)
        self.repos = [f"{cfg.prefix}/r{i}" for i in range(cfg.repos)]
        self.shared = [Layer(f"{self.run_id}-shared-{i}", random_size(rng, cfg.min_layer_mb, cfg.max_layer_mb))
                       for i in range(cfg.shared_layers)]
        self.images: list[Image] = []  # pushed and acknowledged
        self.holders: dict[str, set[str]] = {}  # shared layer digest -> repositories known to hold it
        self.stats = Stats()

    # ---- one client ------------------------------------------------------------------

    async def client(self, n: int, http: aiohttp.ClientSession, deadline: float) -> None:
        rng = random.Random(f"{self.run_id}-{n}")
        rc = RegistryClient(http, self.cfg.base_url, self.cfg.creds, self.stats)
        ops, weights = zip(*self.cfg.mix.items())
        count = 0
        while time.monotonic() < deadline:
            op = rng.choices(ops, weights)[0]
            if op != PUSH and not self.images:
                op = PUSH
            t0 = time.monotonic()
            try:
                if op == PUSH:
                    await self.push(rc, rng, f"c{n}-{count}")
                elif op == PULL:
                    await self.pull(rc, rng.choice(self.images))
                elif op == TAGS:
                    await self.tags(rc, rng.choice(self.images).repo)
                else:
                    await self.head(rc, rng.choice(self.images))
            except (LoadError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                self.stats.error(f"client {n} {op}: {type(e).__name__}: {e}")
            else:
                self.stats.op(op, time.monotonic() - t0)
            count += 1

    # ---- operations ------------------------------------------------------------------

    async def push(self, rc: RegistryClient, rng: random.Random, tag: str) -> None:
        repo = rng.choice(self.repos)
        layers = [Layer(f"{self.run_id}-{tag}", random_size(rng, self.cfg.min_layer_mb, self.cfg.max_layer_mb))]
        if rng.random() < 0.7:
            layers.insert(0, rng.choice(self.shared))
        if rng.random() < 0.2:
            layers.append(Layer(f"{self.run_id}-{tag}-b", random_size(rng, self.cfg.min_layer_mb, 4)))
        image = Image(repo, tag, make_config(f"{self.run_id}-{tag}", layers), layers)
        scope = f"repository:{repo}:pull,push"
        rc.forget_tokens()  # each push as its own skopeo copy
        await self.put_blob(rc, rng, repo, scope, image.config.digest, image.config.size, image.config.data)
        for layer in layers:
            await self.put_layer(rc, rng, repo, scope, layer)
        r = await rc.request("PUT", f"/v2/{repo}/manifests/{tag}", scope=scope,
                             headers={"Content-Type": OCI_MANIFEST}, data=image.manifest, ok=(201,))
        if r.headers.get("Docker-Content-Digest") != image.manifest_digest:
            raise LoadError(f"manifest PUT {repo}:{tag}: digest {r.headers.get('Docker-Content-Digest')}, "
                            f"sent {image.manifest_digest}")
        self.images.append(image)

    async def put_layer(self, rc: RegistryClient, rng: random.Random, repo: str, scope: str, layer: Layer) -> None:
        digest = layer.digest
        r = await rc.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=scope, ok=(200, 404))
        if r.status == 200:
            return
        others = sorted(self.holders.get(digest, set()) - {repo})
        if others:
            src = rng.choice(others)
            r = await rc.request("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={src}",
                                 scope=f"{scope} repository:{src}:pull", ok=(201, 202))
            if r.status == 201:
                self._holds(digest, repo)
                return
            await self._send_layer(rc, rng, scope, layer, self._location(r), session_started=True)
        else:
            await self._send_layer(rc, rng, scope, layer, None)
        self._holds(digest, repo)

    def _holds(self, digest: str, repo: str) -> None:
        if any(digest == s.digest for s in self.shared):
            self.holders.setdefault(digest, set()).add(repo)

    async def put_blob(self, rc: RegistryClient, rng: random.Random, repo: str, scope: str, digest: str,
                       size: int, data: bytes) -> None:
        """A small blob: monolithic, in one POST or as POST + PUT."""
        if rng.random() < 0.5:
            r = await rc.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", scope=scope, data=data,
                                 headers={"Content-Type": "application/octet-stream"}, ok=(201, 202))
            if r.status == 201:
                return
            # the spec lets a registry answer 202 (distribution does): then a PUT, as for the other way
        else:
            r = await rc.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, ok=(202,))
        await rc.request("PUT", self._with_digest(self._location(r), digest), scope=scope, data=data,
                         headers={"Content-Type": "application/octet-stream"}, ok=(201,))

    async def _send_layer(self, rc: RegistryClient, rng: random.Random, scope: str, layer: Layer,
                          location: URL | None, session_started: bool = False) -> None:
        repo = scope.split(":")[1]
        if location is None:
            r = await rc.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, ok=(202,))
            location = self._location(r)
        mode = rng.choice(("monolithic", "chunked", "streamed"))
        octet = {"Content-Type": "application/octet-stream"}
        if mode == "monolithic":
            r = await rc.request("PUT", self._with_digest(location, layer.digest), scope=scope,
                                 data=lambda: layer.stream(), ok=(201,),
                                 headers={**octet, "Content-Length": str(layer.size)})
            self.stats.bytes_up += layer.size
            return
        if mode == "chunked":
            start = 0
            while start < layer.size:
                end = min(layer.size, start + CHUNK)
                r = await rc.request("PATCH", location, scope=scope, ok=(202,),
                                     data=lambda s=start, e=end: layer.stream(s, e),
                                     headers={**octet, "Content-Length": str(end - start),
                                              "Content-Range": f"{start}-{end - 1}"})
                location = self._location(r)
                self.stats.bytes_up += end - start
                start = end
        else:
            r = await rc.request("PATCH", location, scope=scope, ok=(202,), data=lambda: layer.stream(),
                                 headers=octet)
            location = self._location(r)
            self.stats.bytes_up += layer.size
        await rc.request("PUT", self._with_digest(location, layer.digest), scope=scope, ok=(201,))

    @staticmethod
    def _location(r) -> URL:
        raw = r.headers.get("Location")
        if not raw:
            raise LoadError(f"{r.status} from {r.url.path} without Location")
        return r.url.join(URL(raw, encoded=True))

    @staticmethod
    def _with_digest(location: URL, digest: str) -> URL:
        sep = "&" if location.raw_query_string else "?"
        return URL(f"{location}{sep}digest={digest}", encoded=True)

    async def pull(self, rc: RegistryClient, image: Image) -> None:
        scope = f"repository:{image.repo}:pull"
        rc.forget_tokens()  # each pull as its own skopeo copy
        r = await rc.request("GET", f"/v2/{image.repo}/manifests/{image.tag}", scope=scope,
                             headers={"Accept": ACCEPT})
        got = f"sha256:{hashlib.sha256(r.body).hexdigest()}"
        if got != image.manifest_digest or r.headers.get("Docker-Content-Digest") != image.manifest_digest:
            raise LoadError(f"pull {image.repo}:{image.tag}: manifest {got}, pushed {image.manifest_digest}")
        for digest, size in image.blobs:
            await self.get_blob(rc, image.repo, scope, digest, size)

    async def get_blob(self, rc: RegistryClient, repo: str, scope: str, digest: str, size: int) -> None:
        h = hashlib.sha256()
        n = 0

        def sink(piece: bytes) -> None:
            nonlocal n
            h.update(piece)
            n += len(piece)
        await rc.request("GET", f"/v2/{repo}/blobs/{digest}", scope=scope, sink=sink)
        self.stats.bytes_down += n
        if n != size or f"sha256:{h.hexdigest()}" != digest:
            raise LoadError(f"blob {digest} of {repo}: {n} bytes, sha256:{h.hexdigest()}")

    async def tags(self, rc: RegistryClient, repo: str) -> None:
        r = await rc.request("GET", f"/v2/{repo}/tags/list", scope=f"repository:{repo}:pull")
        if f'"{repo}"'.encode() not in r.body:
            raise LoadError(f"tags of {repo}: {r.body[:200]!r}")

    async def head(self, rc: RegistryClient, image: Image) -> None:
        r = await rc.request("HEAD", f"/v2/{image.repo}/manifests/{image.tag}",
                             scope=f"repository:{image.repo}:pull", headers={"Accept": ACCEPT})
        if r.headers.get("Docker-Content-Digest") != image.manifest_digest:
            raise LoadError(f"HEAD {image.repo}:{image.tag}: {r.headers.get('Docker-Content-Digest')}")


def session(cfg: LoadConfig, clients: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False),
                                 timeout=aiohttp.ClientTimeout(total=cfg.request_timeout),
                                 auto_decompress=False)


async def run_load(cfg: LoadConfig, images: list[Image] = ()) -> LoadResult:
    """Run `cfg.clients` clients for `cfg.duration` seconds; every image pushed is in the result.
    `images`: ones already in the registry, to pull and look at from the start."""
    w = Workload(cfg)
    w.images.extend(images)
    async with session(cfg, cfg.clients) as http:
        deadline = time.monotonic() + cfg.duration
        w.stats.started = time.monotonic()
        await asyncio.gather(*(w.client(n, http, deadline) for n in range(cfg.clients)))
        w.stats.finished = time.monotonic()
    return LoadResult(w.stats, w.images[len(images):])


async def verify_all(cfg: LoadConfig, images: list[Image], *, concurrency: int = 8) -> list[str]:
    """Pull every image back (manifest by tag, every blob), verifying digests and sizes;
    returns what failed."""
    w = Workload(cfg)
    failures: list[str] = []
    queue = list(images)

    async def worker(http: aiohttp.ClientSession) -> None:
        rc = RegistryClient(http, cfg.base_url, cfg.creds, w.stats)
        while queue:
            image = queue.pop()
            try:
                await w.pull(rc, image)
            except (LoadError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                failures.append(f"{image.repo}:{image.tag}: {type(e).__name__}: {e}")
    async with session(cfg, concurrency) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return failures
