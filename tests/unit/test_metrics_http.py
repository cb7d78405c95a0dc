"""The HTTP middleware over a real aiohttp server: a route template per series, whatever the
path, method or body; unknown paths and methods fold into one series each."""

from __future__ import annotations

import uuid

import aiohttp
from aiohttp import web
from prometheus_client import REGISTRY

from shared.metrics import http as http_metrics


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_routes_methods_and_bytes_are_bounded():
    async def blob(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"y" * 100)

    app = web.Application(middlewares=[http_metrics.middleware])
    app.router.add_route("*", "/v2/{name:.+}/blobs/{digest}", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    route = "/v2/{name}/blobs/{digest}"
    get0 = sample("dockyard_http_requests_total", route=route, method="GET", code="200")
    out0 = sample("dockyard_http_response_bytes_total", route=route, method="GET")
    in0 = sample("dockyard_http_request_bytes_total", route=route, method="PUT")
    other0 = sample("dockyard_http_requests_total", route=route, method="OTHER", code="200")
    miss0 = sample("dockyard_http_requests_total", route="unmatched", method="GET", code="404")
    repos = [f"repo{uuid.uuid4().hex}" for _ in range(5)]
    try:
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as http:
            for i, repo in enumerate(repos):
                async with http.get(f"{base}/v2/{repo}/blobs/sha256:{i:064x}") as r:
                    assert r.status == 200
            async with http.put(f"{base}/v2/a/blobs/b", data=b"z" * 1234) as r:
                assert r.status == 200
            for m in ("TRACE", "PROPFIND"):  # methods aiohttp takes that we do not name
                async with http.request(m, f"{base}/v2/a/blobs/b") as r:
                    assert r.status == 200
            for _ in range(3):
                async with http.get(f"{base}/{uuid.uuid4().hex}") as r:
                    assert r.status == 404
    finally:
        await runner.cleanup()
    assert sample("dockyard_http_requests_total", route=route, method="GET", code="200") - get0 == 5
    assert sample("dockyard_http_response_bytes_total", route=route, method="GET") - out0 == 500
    assert sample("dockyard_http_request_bytes_total", route=route, method="PUT") - in0 == 1234
    assert sample("dockyard_http_requests_total", route=route, method="OTHER", code="200") - other0 == 2
    assert sample("dockyard_http_requests_total", route="unmatched", method="GET", code="404") - miss0 == 3
    routes = {s.labels.get("route") for m in REGISTRY.collect() for s in m.samples if "route" in s.labels}
    # (routes of other apps this process served are there too, e.g. /ui/repositories)
    assert not any(repo in r or "sha256:" in r for r in routes for repo in repos), routes
