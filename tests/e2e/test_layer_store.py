"""The layer-store as its own process (`dockyard up --only layer-store`): found on the bus,
serving bytes over HTTP, and an upload resumed after the whole stack restarted."""

from __future__ import annotations

import os

import aiohttp
import pytest

from shared import bus
from shared.dataplane_sign import DataplaneSigner, load_key
from shared.layer_store_client import LayerStoreClient
from shared.oci.digest import Digest
from tests.e2e.conftest import start_stack, stop_stack

pytestmark = pytest.mark.e2e

DATA = os.urandom(5 << 20)
DIGEST = Digest.from_bytes(DATA)


async def _client_do(stack, fn, data_dir):
    nc = await bus.connect(stack.nats_url, name="test-e2e-layer-store")
    try:
        async with aiohttp.ClientSession() as session:
            return await fn(LayerStoreClient(nc, session, signer=DataplaneSigner(load_key(data_dir))))
    finally:
        await nc.drain()


async def test_upload_survives_a_restart_of_the_service(tmp_path):
    data_dir = tmp_path / "dyls-stack"
    stack = start_stack(data_dir, only=["layer-store"])
    try:
        status = stack.cli("status")
        assert "layer-store" in status.stdout

        async def first(client: LayerStoreClient):
            assert (await client.locate()).startswith("http://")
            uid = await client.start_upload()
            assert await client.append(uid, DATA[:2 << 20], start=0) == 2 << 20
            return uid

        uid = await _client_do(stack, first, data_dir)
    finally:
        assert stop_stack(stack) == 0, (data_dir / "up.log").read_text(errors="replace")

    stack = start_stack(data_dir, only=["layer-store"])
    try:
        async def second(client: LayerStoreClient):
            assert [u.size for u in await client.uploads() if u.id == uid] == [2 << 20]
            assert (await client.upload_status(uid)).size == 2 << 20
            await client.append(uid, DATA[2 << 20:], start=2 << 20)
            info = await client.commit(uid, DIGEST, len(DATA))
            assert info.size == len(DATA)
            assert (await client.stat(DIGEST)).size == len(DATA)
            async with client.open_blob(DIGEST, (len(DATA) - 100, None)) as resp:
                assert resp.status == 206 and await resp.read() == DATA[-100:]
            return await client.read_blob(DIGEST)

        assert await _client_do(stack, second, data_dir) == DATA
        blob = data_dir / "layer-store" / "blobs" / "sha256" / DIGEST.hex[:2] / DIGEST.hex
        assert blob.stat().st_size == len(DATA)
    finally:
        assert stop_stack(stack) == 0, (data_dir / "up.log").read_text(errors="replace")
