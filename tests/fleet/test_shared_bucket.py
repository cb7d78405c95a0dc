"""Two hosts' layer-stores on one S3 bucket (a real SeaweedFS on the fleet's bridge): a blob
stored through host 1 is read through host 2 with its digest verified, and both hosts
committing the same digest at once leave one good blob."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from services.layer_store.storage.s3 import S3Driver
from shared import bus, http_client
from shared.dataplane_sign import DataplaneSigner, load_key
from shared.layer_store_client import LayerStoreClient
from shared.oci.digest import Digest
from tests.unit.layer_store.s3server import make_bucket, start_weed, stop_weed

pytestmark = pytest.mark.root

BUCKET = "dyfleet-shared"
MiB = 1 << 20


@pytest.fixture
def weed_on_bridge(tmp_path):
    """A function starting SeaweedFS on an address of a fleet's bridge (every host reaches it);
    requested before make_fleet, so that it stops after the layer-stores using it."""
    started = []

    def start(ip: str):
        workdir = tmp_path / f"weed{len(started)}"
        workdir.mkdir()
        started.append(start_weed(workdir, ip=ip))
        return started[-1].server

    try:
        yield start
    finally:
        for w in started:
            stop_weed(w)


def _s3_env(server, prefix: str) -> dict[str, str]:
    return {"DOCKYARD_STORAGE_DRIVER": "s3", "DOCKYARD_S3_ENDPOINT": server.endpoint, "DOCKYARD_S3_BUCKET": BUCKET,
            "DOCKYARD_S3_ACCESS_KEY": server.access_key, "DOCKYARD_S3_SECRET_KEY": server.secret_key,
            "DOCKYARD_S3_PREFIX": prefix}


async def _layer_store_urls(h1, n: int) -> dict[str, str]:
    """url -> driver of the layer-stores answering `$SRV.INFO`, once `n` do (asked as the admin)."""
    nc = await bus.connect(f"nats://{h1.addr}:4222", creds=str(h1.data_dir / "credentials" / "admin.creds"),
                           ca=str(h1.data_dir / "credentials" / "ca.pem"))
    try:
        # `up` on the joined host returned once *a* layer-store answered its ping: h1's may
        # have been first, so h2's own can still be connecting
        for _ in range(50):
            infos = await bus.BusClient(nc).gather("$SRV.INFO.layer-store", None, dict, timeout=0.5, expect=n)
            if len(infos) >= n:
                break
    finally:
        await nc.drain()
    return {i["metadata"]["url"]: i["metadata"]["driver"] for i in infos}


async def _exercise(h1, urls: list[str], env: dict[str, str]) -> None:
    ca = str(h1.data_dir / "credentials" / "ca.pem")
    signer = DataplaneSigner(load_key(h1.data_dir))
    async with http_client.session(ca) as session:
        one, two = (LayerStoreClient(None, session, signer=signer, url=u) for u in urls)

        # stored through host 1, read through host 2: the bytes and their digest
        data = os.urandom(3 * MiB + 17)
        digest = Digest.from_bytes(data)
        assert (await one.put_blob(data, digest, len(data))).size == len(data)
        got = await two.read_blob(digest)
        assert len(got) == len(data) and Digest.from_bytes(got) == digest

        # the same digest committed through both hosts at once: one blob, whole, no session left
        same = os.urandom(2 * MiB)
        same_digest = Digest.from_bytes(same)
        ups = [await c.start_upload() for c in (one, two)]
        for c, u in zip((one, two), ups):
            assert await c.append(u, same, start=0) == len(same)
        infos = await asyncio.gather(*(c.commit(u, same_digest, len(same)) for c, u in zip((one, two), ups)))
        assert {(i.digest, i.size) for i in infos} == {(same_digest, len(same))}
        for c in (one, two):
            assert hashlib.sha256(await c.read_blob(same_digest)).hexdigest() == same_digest.hex

    driver = S3Driver.from_env(env)  # the bucket itself, read past both layer-stores
    try:
        usage = await driver.usage()
        assert (usage.blobs, usage.bytes, usage.uploads) == (2, len(data) + len(same), 0)
    finally:
        await driver.close()


def test_two_layer_stores_share_one_bucket(weed_on_bridge, make_fleet):  # weed stops after the hosts
    fl = make_fleet(2)
    h1, h2 = fl.hosts
    server = weed_on_bridge(fl.gateway)
    make_bucket(server, BUCKET)
    env = _s3_env(server, f"fleet-{os.getpid()}/")
    for h in (h1, h2):
        h.env.update(env)
    h1.up("--listen", h1.addr, "--nats-port", "4222", "--registry-addr", f"{h1.addr}:5000")
    token = h1.cli("fleet", "token", "--services", "layer-store").stdout.strip()
    h2.up("--join", h1.addr, "--token", token, "--listen", h2.addr, "--services", "layer-store")

    stores = asyncio.run(_layer_store_urls(h1, 2))
    assert sorted(stores.values()) == ["s3", "s3"], stores
    by_host = {h.addr: next(u for u in stores if u.startswith(f"https://{h.addr}:")) for h in (h1, h2)}
    asyncio.run(_exercise(h1, [by_host[h1.addr], by_host[h2.addr]], env))
