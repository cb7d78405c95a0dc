"""What instrumentation costs: HTTP requests through an aiohttp app with and without the
metrics middleware (shared/metrics/http.py), and one /metrics scrape of a busy registry.

    .venv/bin/python bench/metrics.py [--requests 3000] [--rounds 5]

Two apps in this process on loopback, the same trivial handler; rounds alternate between
them so that the machine's load falls on both alike. Prints median requests per second of
each and their ratio, then the exposition's size and render time after the requests (one
series set per route, method and status).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.metrics import exposition  # noqa: E402
from shared.metrics import http as http_metrics  # noqa: E402


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * 512)


async def serve(instrumented: bool) -> tuple[web.AppRunner, str]:
    app = web.Application(middlewares=[http_metrics.middleware] if instrumented else [])
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", hello)
    exposition.add_route(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def rate(http: aiohttp.ClientSession, base: str, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        async with http.get(f"{base}/v2/team/app{i % 50}/blobs/sha256:{i:064x}") as r:
            await r.read()
    return n / (time.perf_counter() - start)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    plain_runner, plain = await serve(False)
    inst_runner, inst = await serve(True)
    try:
        async with aiohttp.ClientSession() as http:
            await rate(http, plain, 200)
            await rate(http, inst, 200)
            with_m, without = [], []
            for _ in range(args.rounds):
                without.append(await rate(http, plain, args.requests))
                with_m.append(await rate(http, inst, args.requests))
            t = time.perf_counter()
            async with http.get(f"{inst}/metrics") as r:
                body = await r.read()
            scrape = time.perf_counter() - t
        a, b = statistics.median(without), statistics.median(with_m)
        print(f"HTTP requests/s without metrics {a:,.0f}, with {b:,.0f}: ratio {b / a:.3f} "
              f"({args.rounds} rounds of {args.requests})")
        print(f"/metrics after {args.requests * args.rounds + 200:,} requests over 50 repositories: "
              f"{len(body):,} bytes in {scrape * 1000:.1f} ms (labels name the route, not the path)")
    finally:
        await plain_runner.cleanup()
        await inst_runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
