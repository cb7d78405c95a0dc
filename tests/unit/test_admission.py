"""Bounded admission: beyond the limit a request waits briefly, then gets 429 with Retry-After
(the registry's error table), over real HTTP; a request with a body waits longer."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from services.layer_store import admission as ls_gate
from services.registry_gateway import admission as gw_gate
from services.registry_gateway.errors import error_middleware
from shared.admission import Admission
from shared.errors import InvalidArgument


async def _serve(app: web.Application):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def _slow_app(middlewares, release: asyncio.Event, path: str) -> web.Application:
    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await release.wait()
        return web.Response(text="ok")
    app = web.Application(middlewares=middlewares)
    app.router.add_route("*", path, slow)
    return app


@pytest.mark.parametrize("plane", ["gateway", "layer-store"])
async def test_beyond_the_limit_429_with_retry_after_then_all_succeed(plane):
    adm = Admission(3, wait=0.2, body_wait=30, retry_after=2)
    release = asyncio.Event()
    if plane == "gateway":
        app = _slow_app([gw_gate.middleware(adm), error_middleware], release, "/v2/x/manifests/t")
    else:
        app = _slow_app([ls_gate.middleware(adm)], release, "/v2/x/manifests/t")
    runner, base = await _serve(app)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            async def get():
                async with http.get(f"{base}/v2/x/manifests/t") as r:
                    return r.status, r.headers.get("Retry-After"), await r.read()
            async def head():
                async with http.head(f"{base}/v2/x/manifests/t") as r:
                    return r.status, r.headers.get("Retry-After"), b""
            async def put():  # a body: it waits for a slot instead of being refused
                async with http.put(f"{base}/v2/x/manifests/t", data=b"m" * 1000) as r:
                    return r.status, r.headers.get("Retry-After"), await r.read()
            held = [asyncio.ensure_future(get()) for _ in range(3)]
            while adm.inflight < 3:
                await asyncio.sleep(0.01)
            bodies = [asyncio.ensure_future(put()) for _ in range(3)]
            while adm.waiting < 3:
                await asyncio.sleep(0.01)
            refused = await asyncio.gather(*(get() for _ in range(10)), *(head() for _ in range(5)))
            assert all(s == 429 and int(ra) >= 2 for s, ra, _ in refused), refused
            assert b'"TOOMANYREQUESTS"' in refused[0][2]
            assert adm.refused == 15 and adm.waiting == 3  # the bodies still wait
            release.set()
            done = await asyncio.gather(*held, *bodies)
            assert [s for s, _, _ in done] == [200] * 6
            again = await asyncio.gather(*(get() for _ in range(10)))
            assert [s for s, _, _ in again] == [200] * 10
            assert adm.inflight == 0 and adm.waiting == 0
    finally:
        await runner.cleanup()


async def test_layer_store_counts_only_registry_clients():
    """The gateway's own requests (`/blobs`, `/uploads`) are bounded by the gateway's listener."""
    adm = Admission(1, wait=0.1)
    release = asyncio.Event()
    app = _slow_app([ls_gate.middleware(adm)], release, "/blobs/{d}")
    runner, base = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            async def get():
                async with http.get(f"{base}/blobs/x") as r:
                    return r.status
            tasks = [asyncio.ensure_future(get()) for _ in range(5)]
            await asyncio.sleep(0.3)
            release.set()
            assert await asyncio.gather(*tasks) == [200] * 5
    finally:
        await runner.cleanup()


def test_retry_after_grows_with_the_overload():
    """Refused at ten times the admitted rate: come back in about ten seconds, not one."""
    adm = Admission(2, retry_after=1)
    assert adm.retry_after_now() == 1
    for _ in range(5):
        adm._count(False)
    for _ in range(50):
        adm._count(True)
    assert adm.retry_after_now() == 10
    for _ in range(5000):
        adm._count(True)
    assert adm.retry_after_now() == 30  # bounded


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("DOCKYARD_MAX_INFLIGHT", "7")
    monkeypatch.setenv("DOCKYARD_ADMISSION_WAIT", "0.5")
    monkeypatch.setenv("DOCKYARD_RETRY_AFTER", "3")
    adm = Admission.from_env()
    assert (adm.limit, adm.wait, adm.retry_after) == (7, 0.5, 3)
    monkeypatch.setenv("DOCKYARD_MAX_INFLIGHT", "lots")
    with pytest.raises(InvalidArgument, match="DOCKYARD_MAX_INFLIGHT"):
        Admission.from_env()
    monkeypatch.setenv("DOCKYARD_MAX_INFLIGHT", "0")  # off
    assert Admission.from_env().limit == 0


def test_a_service_default_applies_only_while_the_setting_is_unset(monkeypatch):
    from services.layer_store import admission as layer_store_gate
    monkeypatch.delenv("DOCKYARD_MAX_INFLIGHT", raising=False)
    assert Admission.from_env().limit == 256
    # the layer-store carries the bytes: its requests cost more, it admits fewer
    assert Admission.from_env(layer_store_gate.DEFAULT_MAX_INFLIGHT).limit == 128
    monkeypatch.setenv("DOCKYARD_MAX_INFLIGHT", "300")
    assert Admission.from_env(layer_store_gate.DEFAULT_MAX_INFLIGHT).limit == 300


async def test_a_waiting_body_is_left_in_the_socket():
    """While an upload waits for a slot its connection is not read: with a 16 MiB read
    buffer aiohttp alone would take ~32 MiB of it into the process; here only what the
    kernel's socket buffers hold has left the client."""
    adm = Admission(1, wait=0.1, body_wait=30)
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        n = 0
        async for chunk in request.content.iter_any():
            n += len(chunk)
        await release.wait()
        return web.Response(text=str(n))
    app = web.Application(middlewares=[gw_gate.middleware(adm), error_middleware],
                          handler_args={"read_bufsize": 16 << 20})
    app.router.add_route("*", "/v2/x/blobs/uploads/u", slow)
    runner, base = await _serve(app)
    sent = 0
    total = 64 << 20

    async def body():
        nonlocal sent
        piece = b"b" * (1 << 20)
        while sent < total:
            sent += len(piece)
            yield piece
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            held = asyncio.ensure_future(http.put(f"{base}/v2/x/blobs/uploads/u", data=b"x"))
            while adm.inflight < 1:
                await asyncio.sleep(0.01)
            upload = asyncio.ensure_future(http.patch(f"{base}/v2/x/blobs/uploads/u", data=body()))
            while adm.waiting < 1:
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)
            assert sent < 24 << 20, sent
            release.set()
            (await held).close()
            r = await upload
            assert r.status == 200 and await r.text() == str(total)
            r.close()
    finally:
        await runner.cleanup()
