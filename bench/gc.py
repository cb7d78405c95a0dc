"""Benchmark: a full registry garbage-collection of 10,000 manifests and 50,000 blobs.

The same content is laid out twice, fast, straight through the storage layers: as the
layer-store's files plus RegistryMeta links and tags in JetStream KV for dockyard, and in
the CNCF registry's filesystem format for `docker-registry garbage-collect`. 5,000 of the
blobs are garbage. dockyard's run is online (layer-store and garbage-collector each in
its own process, answering on the bus throughout); the CNCF registry's needs the registry
stopped. Prints both times and the ratio.

    .venv/bin/python bench/gc.py [--manifests 10000] [--blobs 50000] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared import bus, subjects  # noqa: E402
from shared.errors import Unavailable  # noqa: E402
from shared.messages.common import Empty  # noqa: E402
from shared.messages.gc import RunReply, RunRequest, StatusReply  # noqa: E402
from shared.messages.layer_store import UsageReply  # noqa: E402
from shared.natsserver import EmbeddedNats  # noqa: E402
from shared.oci import mediatypes as mt  # noqa: E402
from shared.oci.digest import Digest  # noqa: E402
from shared.registry_meta import ManifestLink, RegistryMeta  # noqa: E402

REPOS = 100
LAYERS_PER_IMAGE = 3
AGE = 2 * 3600  # every blob is older than the default 1 h grace


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Content:
    """Manifests (each: a unique config, 3 layers of a shared pool) and garbage blobs."""

    def __init__(self, n_manifests: int, n_blobs: int):
        n_garbage = n_blobs // 10
        n_layers = n_blobs - 2 * n_manifests - n_garbage
        assert n_layers >= 1, "too few blobs for that many manifests"
        self.blobs: dict[str, bytes] = {}
        self.images = []  # (repo, tag or "", manifest digest, body, config, layers)
        layers = [self._blob(b"layer %d" % i + b"\0" * 64) for i in range(n_layers)]
        for i in range(n_manifests):
            repo = f"bench/r{i % REPOS:03d}"
            cfg = json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode()
            cdesc = {"mediaType": mt.DOCKER_CONFIG, "digest": self._blob(cfg), "size": len(cfg)}
            picks = [layers[(LAYERS_PER_IMAGE * i + k) % n_layers] for k in range(LAYERS_PER_IMAGE)]
            ldescs = [{"mediaType": mt.DOCKER_LAYER_GZIP, "digest": d, "size": len(self.blobs[d])}
                      for d in picks]
            body = json.dumps({"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
                               "config": cdesc, "layers": ldescs}, indent=3).encode()
            tag = f"t{i}" if i % 5 else ""  # a fifth untagged: still kept (no retention run)
            self.images.append((repo, tag, self._blob(body), body, cdesc, ldescs))
        self.garbage = [self._blob(b"garbage %d" % i + b"\0" * 64) for i in range(n_garbage)]

    def _blob(self, data: bytes) -> str:
        d = sha(data)
        self.blobs[d] = data
        return d


def write_blobs(content: Content, layer_store: Path, distribution: Path) -> None:
    """The layer-store's `blobs/sha256/<2>/<hex>` and distribution's `.../<hex>/data` (hard links)."""
    old = time.time() - AGE
    dist_blobs = distribution / "docker/registry/v2/blobs/sha256"
    for d, data in content.blobs.items():
        hexd = d.split(":", 1)[1]
        p = layer_store / "blobs/sha256" / hexd[:2] / hexd
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (old, old))
        q = dist_blobs / hexd[:2] / hexd / "data"
        q.parent.mkdir(parents=True, exist_ok=True)
        os.link(p, q)


def write_distribution_repos(content: Content, distribution: Path) -> None:
    repos = distribution / "docker/registry/v2/repositories"
    for repo, tag, digest, _, cdesc, ldescs in content.images:
        base = repos / repo
        hexd = digest.split(":", 1)[1]
        link = base / "_manifests/revisions/sha256" / hexd / "link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(digest)
        for desc in [cdesc, *ldescs]:
            ll = base / "_layers/sha256" / desc["digest"].split(":", 1)[1] / "link"
            if not ll.exists():
                ll.parent.mkdir(parents=True, exist_ok=True)
                ll.write_text(desc["digest"])
        if tag:
            cur = base / "_manifests/tags" / tag / "current/link"
            cur.parent.mkdir(parents=True, exist_ok=True)
            cur.write_text(digest)
            idx = base / "_manifests/tags" / tag / "index/sha256" / hexd / "link"
            idx.parent.mkdir(parents=True, exist_ok=True)
            idx.write_text(digest)


async def write_kv(nc, content: Content) -> None:
    meta = await RegistryMeta.open(nc)
    sem = asyncio.Semaphore(128)
    now = time.time() - AGE

    async def one(repo, tag, digest, body, cdesc, ldescs):
        async with sem:
            await meta.put_manifest(ManifestLink(
                repository=repo, digest=Digest(digest), media_type=mt.DOCKER_MANIFEST,
                size=len(body), pushed_at=now,
                blobs=[Digest(cdesc["digest"])] + [Digest(x["digest"]) for x in ldescs],
                config=Digest(cdesc["digest"])))
            if tag:
                await meta.tag_manifest(repo, tag, Digest(digest))

    await asyncio.gather(*(one(*img) for img in content.images))


def start(service: str, env: dict[str, str], logs: Path) -> subprocess.Popen:
    out = open(logs / f"{service}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", service], env=env,
                            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


async def wait_for(client: bus.BusClient, subject: str, reply, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.request(subject, Empty(), reply, timeout=2)
            return
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def count_distribution_blobs(distribution: Path) -> int:
    return sum(1 for _ in (distribution / "docker/registry/v2/blobs/sha256").glob("*/*/data"))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifests", type=int, default=10_000)
    ap.add_argument("--blobs", type=int, default=50_000)
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="dygc-bench-"))
    data, dist = scratch / "data", scratch / "distribution"
    (data / "logs").mkdir(parents=True)
    nats = EmbeddedNats(scratch / "nats").start()
    procs: list[subprocess.Popen] = []
    try:
        t = time.monotonic()
        content = Content(args.manifests, args.blobs)
        write_blobs(content, data / "layer-store", dist)
        write_distribution_repos(content, dist)
        nc = await bus.connect(nats.url, name="bench")
        await write_kv(nc, content)
        n_blobs, n_garbage = len(content.blobs), len(content.garbage)
        print(f"content: {len(content.images)} manifests, {n_blobs} blobs ({n_garbage} garbage), "
              f"laid out in {time.monotonic() - t:.1f}s")

        env = {**os.environ, "DOCKYARD_DATA_DIR": str(data), "DOCKYARD_NATS_URL": nats.url,
               "DOCKYARD_LOG_LEVEL": "warning"}
        procs = [start("layer-store", env, data / "logs"), start("garbage-collector", env, data / "logs")]
        client = bus.BusClient(nc)
        await wait_for(client, subjects.BLOB_USAGE, UsageReply)
        await wait_for(client, subjects.GC_STATUS, StatusReply)

        # No pushes run here, so no settle wait: the time is the work (default settle: 0 s).
        t = time.monotonic()
        rep = await client.request(subjects.GC_RUN, RunRequest(jobs=["registry"], settle_seconds=0),
                                   RunReply, timeout=600)
        ours = time.monotonic() - t
        r = rep.reports[0]
        assert not r.error, r.error
        left = (await client.request(subjects.BLOB_USAGE, Empty(), UsageReply)).blobs
        assert r.removed == n_garbage and left == n_blobs - n_garbage, (r.removed, left)
        print(f"dockyard registry GC (online): {ours:.2f}s  examined {r.examined}, removed "
              f"{r.removed}, freed {r.freed} bytes")

        peer = None
        if shutil.which("docker-registry"):
            cfg = scratch / "registry.yml"
            cfg.write_text(f"version: 0.1\nstorage: {{filesystem: {{rootdirectory: {dist}}}, "
                           f"delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:0}}\n")
            t = time.monotonic()
            p = subprocess.run(["docker-registry", "garbage-collect", str(cfg)],
                               capture_output=True, text=True)
            peer = time.monotonic() - t
            if p.returncode != 0:
                print(f"docker-registry garbage-collect failed:\n{p.stderr[-2000:]}")
                peer = None
            else:
                remaining = count_distribution_blobs(dist)
                assert remaining == n_blobs - n_garbage, remaining
                print(f"CNCF docker-registry garbage-collect (offline): {peer:.2f}s  "
                      f"removed {n_blobs - remaining}")
        if peer:
            print(f"ratio dockyard/CNCF: {ours / peer:.2f} (below 1: dockyard faster)")
        else:
            print("CNCF registry not available: no ratio")
        await nc.drain()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        nats.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch}")


if __name__ == "__main__":
    asyncio.run(main())
