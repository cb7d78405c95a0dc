"""The client's Bearer flow against dockyard's auth (token endpoint + authorize) in front of
a real CNCF registry, and copy_image across registries."""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest
from aiohttp import web

from services.registry_gateway.auth import open_auth
from services.registry_gateway.errors import error_response
from shared.config import Config
from shared.errors import DockyardError, PermissionDenied, Unauthenticated, Unavailable
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from shared.oci.manifest import Descriptor, Index, Platform, encode_canonical
from shared.registry import CopyProgress, RegistryClient, copy_image, select_platform

_REPO_RE = re.compile(r"^/v2/(.+?)/(manifests|blobs|tags)/")


@pytest.fixture
async def auth(nc, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKYARD_BCRYPT_ROUNDS", "4")
    tag = uuid.uuid4().hex[:10]
    buckets = {"users_bucket": f"dyau-users-{tag}", "acl_bucket": f"dyau-acl-{tag}"}
    a = await open_auth(nc, Config(data_dir=str(tmp_path)), **buckets)
    yield a
    for b in buckets.values():
        await nc.jetstream().delete_key_value(b)


@pytest.fixture
async def guarded(auth, cncf_registry, aiohttp_server):
    """dockyard's authorization in front of a CNCF registry: a proxy that asks `authorize` first."""
    upstream = cncf_registry()
    session = aiohttp.ClientSession(auto_decompress=False)

    async def proxy(request: web.Request) -> web.StreamResponse:
        m = _REPO_RE.match(request.path)
        if request.path == "/v2/_catalog":
            repo, actions = None, frozenset({"*"})
        elif m:
            repo = m.group(1)
            actions = frozenset({"pull"} if request.method in ("GET", "HEAD")
                                else {"delete"} if request.method == "DELETE" else {"push"})
        else:
            repo, actions = None, frozenset()
        try:
            await auth.authorize(request, repo, actions)
        except DockyardError as e:
            return error_response(e, head=request.method == "HEAD")  # the gateway's own mapping
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "authorization")}
        async with session.request(request.method, f"http://{upstream.addr}{request.path_qs}", headers=headers,
                                   data=await request.read(), allow_redirects=False) as up:
            body = await up.read()
            out = {k: v for k, v in up.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "date", "server")}
            if request.method == "HEAD":
                return web.Response(status=up.status, headers=out)
            return web.Response(status=up.status, body=body, headers=out)

    app = web.Application(client_max_size=64 << 20)
    app.add_routes(auth.routes())
    app.router.add_route("*", "/v2/{tail:.*}", proxy)
    server = await aiohttp_server(app)
    await auth.store.add_user("alice", "alicepw")
    await auth.store.grant("alice", "alice/*", "push")
    await auth.store.grant("alice", "shared/lib", "pull")
    yield f"127.0.0.1:{server.port}", upstream
    await session.close()


async def test_bearer_flow_push_pull_and_denials(guarded, session, make_image):
    addr, _ = guarded
    manifest, blobs = make_image([b"layer one", b"layer two"])
    alice = RegistryClient(session, addr, credentials=("alice", "alicepw"))
    await alice.ping()
    for d, b in blobs.items():
        assert await alice.push_blob("alice/app", d, len(b), b) == "uploaded"
    digest = await alice.put_manifest("alice/app", "v1", manifest, mt.OCI_MANIFEST)
    assert (await alice.get_manifest("alice/app", "v1")).digest == digest
    assert await alice.list_tags("alice/app") == ["v1"]
    # Tokens are cached per scope: a second read needs no new challenge.
    assert len(alice.auth._tokens) >= 2

    with pytest.raises(PermissionDenied):
        await alice.push_blob("bob/app", Digest.from_bytes(b"x"), 1, b"x")
    with pytest.raises(Unauthenticated):
        await RegistryClient(session, addr, credentials=("alice", "wrong")).ping()
    anon = RegistryClient(session, addr)
    with pytest.raises(Unauthenticated):
        await anon.get_manifest("alice/app", "v1")


async def test_a_throttled_login_says_so(guarded, session, auth):
    from services.registry_gateway.auth.throttle import LoginThrottle
    addr, _ = guarded
    auth.throttle = LoginThrottle(clock=lambda: 1000.0)  # time stands still: the block holds
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            await RegistryClient(session, addr, credentials=("alice", "guess")).ping()
    with pytest.raises(Unavailable, match="too many failed logins, retry in 1 s") as e:
        await RegistryClient(session, addr, credentials=("alice", "alicepw")).ping()
    assert e.value.detail_code == "TOOMANYREQUESTS"


async def test_anonymous_pull_of_public_repository(guarded, session, make_image, auth):
    addr, _ = guarded
    manifest, blobs = make_image([b"public layer"])
    alice = RegistryClient(session, addr, credentials=("alice", "alicepw"))
    for d, b in blobs.items():
        await alice.push_blob("alice/pub", d, len(b), b)
    await alice.put_manifest("alice/pub", "v1", manifest, mt.OCI_MANIFEST)
    anon = RegistryClient(session, addr)
    with pytest.raises(Unauthenticated):
        await anon.get_manifest("alice/pub", "v1")
    await auth.store.set_visibility("alice/pub", True)
    anon = RegistryClient(session, addr)
    assert (await anon.get_manifest("alice/pub", "v1")).body == manifest


async def test_copy_index_across_registries_with_auth(guarded, cncf_registry, session, make_image):
    addr, _ = guarded
    other = cncf_registry()
    src = RegistryClient(session, other.addr)
    children = []
    for arch in ("amd64", "arm64"):
        manifest, blobs = make_image([f"{arch} layer".encode(), b"shared layer"], arch=arch)
        for d, b in blobs.items():
            await src.push_blob("up/app", d, len(b), b)
        d = await src.put_manifest("up/app", str(Digest.from_bytes(manifest)), manifest, mt.OCI_MANIFEST)
        children.append(Descriptor(media_type=mt.OCI_MANIFEST, digest=d, size=len(manifest),
                                   platform=Platform(architecture=arch, os="linux")))
    index = encode_canonical(Index(schema_version=2, media_type=mt.OCI_INDEX, manifests=children))
    index_digest = await src.put_manifest("up/app", "multi", index, mt.OCI_INDEX)

    dst = RegistryClient(session, addr, credentials=("alice", "alicepw"))
    events: list[CopyProgress] = []
    result = await copy_image(src, "up/app", "multi", dst, "alice/app", "multi", progress=events.append)
    assert result.digest == index_digest and result.media_type == mt.OCI_INDEX
    # 2 configs + 2 arch layers + 1 shared layer, the shared one once.
    assert result.stats.blobs_copied == 5 and result.stats.blobs_skipped == 0
    got = await dst.get_manifest("alice/app", "multi")
    assert got.body == index
    for c in children:
        assert (await dst.head_manifest("alice/app", str(c.digest))).digest == c.digest

    again = await copy_image(src, "up/app", "multi", dst, "alice/app", "multi")
    assert again.stats.blobs_copied == 0 and again.stats.blobs_skipped == 5

    # Within one registry, blobs are mounted; with a platform, only that image is copied.
    one = await copy_image(dst, "alice/app", "multi", dst, "alice/arm", "1", platform=("linux", "arm64"))
    assert one.digest == children[1].digest and one.stats.blobs_copied == 0
    assert await dst.blob_exists("alice/arm", Digest.from_bytes(b"arm64 layer")) is not None
    assert await dst.blob_exists("alice/arm", Digest.from_bytes(b"amd64 layer")) is None

    from shared.oci.manifest import parse_manifest
    _, idx = parse_manifest(index)
    assert select_platform(idx, "linux", "amd64").digest == children[0].digest
    with pytest.raises(DockyardError):
        select_platform(idx, "linux", "s390x")
