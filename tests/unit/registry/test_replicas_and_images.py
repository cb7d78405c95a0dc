"""Two gateway replicas on one NATS act as one registry; the image verbs; the image events."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from shared import codec, subjects
from shared.errors import Conflict, NotFound
from shared.layer_store_client import LayerStoreClient
from shared.messages.registry import (ImagePushed, ImagesRequest, RmiRequest, TagRequest, UntagRequest)
from shared.registry_meta import RegistryMeta
from services.registry_gateway.core import Registry
from services.registry_gateway.images import ImageVerbs
from tests.unit.registry.conftest import running_gateway
from tests.unit.registry.ocidata import Image, digest, push_image

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def second_url(module_nc, suffix, layer_store, dataplane_signer):
    async with running_gateway(module_nc, suffix, blob_redirect="auto", signer=dataplane_signer) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def verbs(module_nc, suffix, layer_store, dataplane_signer):
    async with aiohttp.ClientSession() as session:
        registry = Registry(await RegistryMeta.open(module_nc, suffix=suffix),
                            LayerStoreClient(module_nc, session, signer=dataplane_signer), module_nc)
        yield ImageVerbs(registry)


async def test_push_through_one_pull_through_the_other(http, registry_url, second_url):
    img = Image(layer_size=200_000)
    # a chunked upload started on one replica and finished on the other
    async with http.post(f"{registry_url}/v2/dyrg/rep/blobs/uploads/") as r:
        path = r.headers["Location"]
    async with http.patch(second_url + path, data=img.layer[:1000], headers={"Content-Range": "0-999"}) as r:
        assert r.status == 202
    async with http.put(registry_url + path, params={"digest": digest(img.layer)}, data=img.layer[1000:]) as r:
        assert r.status == 201
    d = await push_image(http, registry_url, "dyrg/rep", "v1", img)
    async with http.get(f"{second_url}/v2/dyrg/rep/manifests/v1") as r:
        assert r.headers["Docker-Content-Digest"] == d and await r.read() == img.manifest()
    async with http.get(f"{second_url}/v2/dyrg/rep/blobs/{digest(img.layer)}") as r:
        assert await r.read() == img.layer
    # on loopback the second replica redirects blob reads to the layer-store
    async with http.get(f"{second_url}/v2/dyrg/rep/blobs/{digest(img.layer)}", allow_redirects=False) as r:
        assert r.status == 307 and URL(r.headers["Location"]).path.endswith(f"/blobs/{digest(img.layer)}")
    async with http.get(f"{second_url}/v2/dyrg/rep/blobs/{digest(img.layer)}", headers={"Range": "bytes=5-9"}) as r:
        assert r.status == 206 and await r.read() == img.layer[5:10]
    async with http.get(f"{second_url}/v2/dyrg/other/blobs/{digest(img.layer)}", allow_redirects=False) as r:
        assert r.status == 404, "no redirect for a blob the repository does not hold"
    async with http.delete(f"{second_url}/v2/dyrg/rep/manifests/v1") as r:
        assert r.status == 202
    async with http.get(f"{registry_url}/v2/dyrg/rep/manifests/v1") as r:
        assert r.status == 404


async def test_push_publishes_an_event(module_nc, http, registry_url):
    got: asyncio.Queue = asyncio.Queue()

    async def on_event(m) -> None:
        got.put_nowait(codec.decode(m.data, ImagePushed))

    sub = await module_nc.subscribe(subjects.EVENT_IMAGE_PUSHED, cb=on_event)
    try:
        d = await push_image(http, registry_url, "dyrg/events", "e1", Image(layer_size=10))
        while True:
            ev = await asyncio.wait_for(got.get(), 5)
            if ev.repository == "dyrg/events":
                break
        assert (ev.digest, ev.tag) == (d, "e1")
    finally:
        await sub.unsubscribe()


async def test_images_tag_untag_rmi(http, registry_url, verbs):
    a, b = Image(layer_size=100), Image(layer_size=100)
    da = await push_image(http, registry_url, "dyrg/img", "one", a)
    await push_image(http, registry_url, "dyrg/img", "two", a)
    db = await push_image(http, registry_url, "dyrg/img", "other", b)
    rows = (await verbs.images(ImagesRequest(repository="dyrg/img"))).images
    assert sorted((r.tag, r.digest) for r in rows) == [("one", da), ("other", db), ("two", da)]
    row = next(r for r in rows if r.tag == "one")
    assert row.image_id == digest(a.config) and row.created == "2024-01-02T03:04:05Z"
    assert row.size == len(a.manifest()) + len(a.config) + len(a.layer)

    # tag into another repository: the manifest (and its blobs) become that repository's too
    rep = await verbs.tag(TagRequest(source="dyrg/img:one", target="dyrg/copy:latest"))
    assert rep.digest == da and rep.previous is None
    async with http.get(f"{registry_url}/v2/dyrg/copy/blobs/{digest(a.layer)}") as r:
        assert await r.read() == a.layer
    rep = await verbs.tag(TagRequest(source=digest(b.config)[7:19], target="dyrg/copy:latest"))
    assert (rep.digest, rep.previous) == (db, da), "a tag moves; an image id prefix names the source"

    # rmi of one of two tags untags only; of the last tag deletes the manifest
    out = await verbs.rmi(RmiRequest(reference="dyrg/img:two"))
    assert out.untagged == ["dyrg/img:two"] and out.deleted == []
    out = await verbs.rmi(RmiRequest(reference="dyrg/img:one"))
    assert out.deleted == [f"dyrg/img@{da}"]
    rows = (await verbs.images(ImagesRequest(repository="dyrg/img", all=True))).images
    assert [(r.tag, r.digest) for r in rows] == [("other", db)]

    await verbs.untag(UntagRequest(reference="dyrg/copy:latest"))
    with pytest.raises(NotFound):
        await verbs.untag(UntagRequest(reference="dyrg/copy:latest"))
    untagged = (await verbs.images(ImagesRequest(repository="dyrg/copy", all=True))).images
    assert {r.digest for r in untagged} == {da, db} and all(r.tag == "" for r in untagged)
    assert (await verbs.images(ImagesRequest(repository="dyrg/copy"))).images == []

    # b is now in two repositories, tagged in one: an id prefix deletes it everywhere
    out = await verbs.rmi(RmiRequest(reference=digest(b.config)[7:19]))
    assert sorted(out.deleted) == [f"dyrg/copy@{db}", f"dyrg/img@{db}"]
    assert out.untagged == ["dyrg/img:other"]


async def test_rmi_ambiguous_prefix_and_multi_repository(http, registry_url, verbs):
    images = [Image(layer_size=10) for _ in range(40)]
    ids = [digest(i.config)[7:] for i in images]
    # two ids sharing a first hex digit (40 random ids surely do)
    first = next(c for c in "0123456789abcdef" if sum(x.startswith(c) for x in ids) >= 2)
    for n, img in enumerate(images):
        if ids[n].startswith(first):
            await push_image(http, registry_url, "dyrg/amb", f"t{n}", img)
    with pytest.raises(Conflict) as e:
        await verbs.rmi(RmiRequest(reference=first))
    assert "ambiguous" in e.value.message
    solo = Image(layer_size=10)
    await push_image(http, registry_url, "dyrg/m1", "x", solo)
    await push_image(http, registry_url, "dyrg/m2", "x", solo)
    with pytest.raises(Conflict):
        await verbs.rmi(RmiRequest(reference=digest(solo.config)[7:]))
    out = await verbs.rmi(RmiRequest(reference=digest(solo.config)[7:], force=True))
    assert len(out.deleted) == 2
    with pytest.raises(NotFound):
        await verbs.rmi(RmiRequest(reference="dyrg/none:latest"))


async def test_images_verbs_over_the_bus(module_nc, http, registry_url, verbs):
    from shared.bus import BusClient, BusService
    from shared.messages.registry import ImagesReply
    svc = BusService(module_nc, "dyrg-registry-test")
    verbs.register(svc)
    await svc.start()
    try:
        await push_image(http, registry_url, "dyrg/bus", "b", Image(layer_size=os.getpid() % 50 + 1))
        reply = await BusClient(module_nc).request(subjects.REGISTRY_IMAGES, ImagesRequest(repository="dyrg/bus"),
                                                   ImagesReply)
        assert [r.tag for r in reply.images] == ["b"]
    finally:
        await svc.stop()
