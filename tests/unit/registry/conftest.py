"""A registry under test: the real layer-store service and gateway apps on the session's NATS.

Each module gets its own metadata buckets (suffix `-dyrg<hex>`), dropped afterwards, and
its own layer-store data dir, whose data-plane key (`dataplane_signer`) the gateways share.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
from aiohttp import web

from shared import bus, subjects
from shared.config import Config
from shared.dataplane_sign import DataplaneSigner, load_key
from shared.errors import Unavailable
from shared.messages.common import Empty
from shared.messages.layer_store import LocateReply
from shared.registry_meta import RegistryMeta
from services.registry_gateway.app import create_app
from services.registry_gateway.authz import AllowAll


async def wait_for_layer_store(nc, timeout: float = 10.0) -> str:
    client = bus.BusClient(nc)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return (await client.request(subjects.BLOB_LOCATE, Empty(), LocateReply, timeout=0.5)).url
        except Unavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_layer_store(nc, data_dir: str, nats_url: str) -> AsyncIterator[str]:
    from services.layer_store.service import serve
    task = asyncio.create_task(serve(Config(data_dir=data_dir, nats_url=nats_url)))
    try:
        yield await wait_for_layer_store(nc)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running_gateway(nc, suffix: str, authorizer=None, *, signer: DataplaneSigner,
                          **kw) -> AsyncIterator[str]:
    """A gateway app on a free loopback port; yields its base URL."""
    app = create_app(nc, authorizer or AllowAll(), signer=signer, meta_suffix=suffix, **kw)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_nc(nats_url):
    conn = await bus.connect(nats_url, name="dyrg-test")
    yield conn
    await conn.drain()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def suffix(module_nc):
    tag = "-dyrg" + uuid.uuid4().hex[:8]
    yield tag
    js = module_nc.jetstream()
    for name in RegistryMeta.bucket_names(tag):
        with contextlib.suppress(Exception):
            await js.delete_key_value(name)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
def layer_store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dyrg-ls")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
def dataplane_signer(layer_store_dir) -> DataplaneSigner:
    return DataplaneSigner(load_key(layer_store_dir))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def layer_store(module_nc, nats_url, layer_store_dir):
    async with running_layer_store(module_nc, str(layer_store_dir), nats_url) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registry_url(module_nc, suffix, layer_store, dataplane_signer):
    async with running_gateway(module_nc, suffix, signer=dataplane_signer) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http():
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s
