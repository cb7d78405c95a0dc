"""skopeo against `dockyard up` (auth on) through the direct upload path: the blob bytes go
from skopeo to the layer-store's signed upload URL, never through the gateway, and come back
byte for byte; the blob belongs to the repository it was pushed to, and only to it."""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import skopeo
from tests.support.images import oci_layout

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """An OCI layout (tag `v1`) with one 6 MiB random layer: several write batches."""
    root = tmp_path_factory.mktemp("dyrp-layout")
    oci_layout(root, [os.urandom(6 << 20)], tag="v1")
    return root


def _layer_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    return manifest["layers"][0]["digest"]


def _head(stack, repo: str, digest: str) -> int:
    auth = base64.b64encode(stack.admin_creds.encode()).decode()
    req = urllib.request.Request(f"{stack.registry_url}/v2/{repo}/blobs/{digest}", method="HEAD",
                                 headers={"Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_skopeo_push_goes_straight_to_the_layer_store(stack, layout, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    ref = f"docker://{stack.registry_addr}/dyrp/direct"
    push = skopeo("--debug", "copy", "--dest-tls-verify=false", "--dest-creds", stack.admin_creds,
                  f"oci:{layout}:v1", f"{ref}:v1", env=env)
    patches = re.findall(r'msg="PATCH (http://[^/"]+)(/[^"?]*)', push.stderr)
    assert patches, push.stderr[-3000:]
    assert all(host != f"http://{stack.registry_addr}" and path.startswith("/v2/dyrp/direct/blobs/uploads/")
               for host, path in patches), patches

    layer = _layer_digest(layout)
    assert _head(stack, "dyrp/direct", layer) == 200
    assert _head(stack, "dyrp/elsewhere", layer) == 404, "linked into the pushed repository only"

    out = tmp_path / "out"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", stack.admin_creds, f"{ref}:v1", f"oci:{out}:v1",
           env=env)
    name = layer[len("sha256:"):]
    assert (out / "blobs" / "sha256" / name).read_bytes() == (layout / "blobs" / "sha256" / name).read_bytes()


def test_push_without_credentials_gets_no_upload(stack, layout, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    p = skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
               f"docker://{stack.registry_addr}/dyrp/anon:v1", env=env, check=False)
    assert p.returncode != 0
    assert _head(stack, "dyrp/anon", _layer_digest(layout)) == 404


async def test_our_client_streams_a_big_blob_through_the_direct_upload_path(stack):
    """A streamed PATCH answered by the layer-store: its relative Location is resolved
    against the layer-store's URL, not the registry's (a 404 before the fix)."""
    import aiohttp

    from shared.oci.digest import Digest
    from shared.registry.client import MONOLITHIC_MAX, RegistryClient

    data = os.urandom(MONOLITHIC_MAX + 1_000_003)
    digest = Digest.from_bytes(data)
    async with aiohttp.ClientSession() as session:
        rc = RegistryClient(session, stack.registry_addr, credentials=("admin", stack.admin_password))
        assert await rc.push_blob("dyrp/big", digest, len(data), data) == "uploaded"
        assert await rc.blob_exists("dyrp/big", digest) == len(data)
        got = bytearray()
        async with rc.open_blob("dyrp/big", digest) as chunks:
            async for c in chunks:
                got += c
        assert bytes(got) == data
