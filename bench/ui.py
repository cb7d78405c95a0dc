"""Web UI page times for a registry of 1,000 repositories (the goal: under 100 ms a page).

    .venv/bin/python bench/ui.py [--repos 1000] [--rounds 20]

Starts its own stack (`dockyard up --only layer-store --only registry-gateway` on free ports
in a temp dir), pushes one image and mounts its blobs into REPOS repositories (a manifest push
each), makes every tenth one public, then times each page over HTTP as an admin and
anonymously: median and worst of ROUNDS requests, each after a warm-up request.
Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import start_stack, stop_stack  # noqa: E402
from tests.ui.uikit import csrf_of, login, push_layers, wait_for_registry, wasteful_image  # noqa: E402
from tests.unit.registry.ocidata import OCI_MANIFEST, desc, push_manifest  # noqa: E402

GOAL_MS = 100.0


async def populate(http: aiohttp.ClientSession, base: str, n: int) -> None:
    layers, config, _ = wasteful_image()
    await push_layers(http, base, "bench/r0000", "v1", layers, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": desc("application/vnd.oci.image.config.v1+json", config),
                           "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", x) for x in layers]})
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        repo = f"bench/r{i:04d}"
        async with sem:
            for blob in [*layers, config]:
                d = desc("", blob)["digest"]
                async with http.post(f"{base}/v2/{repo}/blobs/uploads/", params={"mount": d, "from": "bench/r0000"}) as r:
                    assert r.status == 201, await r.text()
            await push_manifest(http, base, repo, "v1", manifest.encode())
    await asyncio.gather(*(one(i) for i in range(1, n)))


async def timed(s: aiohttp.ClientSession, url: str, rounds: int) -> tuple[float, float, int]:
    async with s.get(url) as r:  # warm-up: the image page reads its layer tars once
        assert r.status == 200, (url, r.status)
    times, size = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        async with s.get(url) as r:
            body = await r.read()
        times.append((time.perf_counter() - t0) * 1000)
        size = len(body)
    return statistics.median(times), max(times), size


async def bench(base: str, password: str, n: int, rounds: int) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}
    async with aiohttp.ClientSession(headers=auth) as http:
        t0 = time.perf_counter()
        await populate(http, base, n)
        print(f"pushed {n} repositories in {time.perf_counter() - t0:.1f} s")
    admin = await login(base, "admin", password)
    anon = aiohttp.ClientSession()
    try:
        # make every tenth public through the UI's own form, as an admin would
        for i in range(0, n, 10):
            async with admin.get(f"{base}/ui/repo", params={"name": f"bench/r{i:04d}"}) as r:
                token = csrf_of(await r.text())
            async with admin.post(f"{base}/ui/visibility", allow_redirects=False,
                                  data={"repo": f"bench/r{i:04d}", "public": "1", "csrf": token}) as r:
                assert r.status == 303
        for _ in range(200):  # the repositories view follows the buckets by watch
            async with admin.get(f"{base}/ui/", params={"q": f"r{n - 1:04d}"}) as r:
                if f"bench/r{n - 1:04d}" in await r.text():
                    break
            await asyncio.sleep(0.05)
        cases = [
            ("repositories, admin, page 1", admin, "/ui/"),
            ("repositories, admin, page 10", admin, "/ui/?page=10"),
            ("repositories, admin, search", admin, "/ui/?q=r09"),
            ("repositories, anonymous", anon, "/ui/"),
            ("repository (tags)", admin, "/ui/repo?name=bench/r0500"),
            ("image (config, layers, waste)", admin, "/ui/image?repo=bench/r0500&ref=v1"),
            ("fleet", admin, "/ui/fleet"),
        ]
        print(f"{'page':34} {'median ms':>10} {'max ms':>8} {'bytes':>8}")
        worst = 0.0
        for name, s, path in cases:
            med, mx, size = await timed(s, base + path, rounds)
            worst = max(worst, med)
            print(f"{name:34} {med:10.1f} {mx:8.1f} {size:8d}")
        print(f"slowest median {worst:.1f} ms: {'within' if worst < GOAL_MS else 'over'} the {GOAL_MS:.0f} ms goal")
    finally:
        await admin.close()
        await anon.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repos", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dyui-bench-"))
    stack = start_stack(tmp / "data", only=["layer-store", "registry-gateway"])
    try:
        wait_for_registry(stack.registry_url)
        asyncio.run(bench(stack.registry_url, stack.admin_password, args.repos, args.rounds))
    finally:
        stop_stack(stack)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
