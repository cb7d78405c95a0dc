"""The UI on an image index and on referrers: a tag's platforms, the index's manifests, an
image's referrers (a signature) and the artifact's own page, over real HTTP."""

from __future__ import annotations

import json

import pytest

from tests.ui.conftest import ADMIN_PW
from tests.ui.uikit import login
from tests.unit.registry.ocidata import OCI_INDEX, OCI_MANIFEST, Image, artifact, desc, digest, push_blob, \
    push_image, push_manifest

pytestmark = pytest.mark.asyncio(loop_scope="module")
REPO = "team/multi"
SIGNATURE = "application/vnd.example.signature.v1+json"


async def test_platforms_of_an_index_and_the_referrers_of_an_image(ui_env):
    amd, arm = Image(layer_size=1_000), Image(layer_size=1_200)
    for img in (amd, arm):
        await push_image(ui_env.http, ui_env.url, REPO, digest(img.manifest()), img)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        desc(OCI_MANIFEST, amd.manifest(), platform={"architecture": "amd64", "os": "linux"}),
        desc(OCI_MANIFEST, arm.manifest(), platform={"architecture": "arm64", "os": "linux", "variant": "v8"})]})
    index_digest = await push_manifest(ui_env.http, ui_env.url, REPO, "multi", body.encode(), OCI_INDEX)
    await push_blob(ui_env.http, ui_env.url, REPO, b"{}")
    sig = artifact(amd.manifest(), SIGNATURE)
    sig_digest = await push_manifest(ui_env.http, ui_env.url, REPO, digest(sig), sig)

    async with await login(ui_env.url, "admin", ADMIN_PW) as s:
        async with s.get(f"{ui_env.url}/ui/repo", params={"name": REPO}) as r:
            tags = await r.text()
        async with s.get(f"{ui_env.url}/ui/image", params={"repo": REPO, "ref": "multi"}) as r:
            assert r.status == 200
            index_page = await r.text()
        async with s.get(f"{ui_env.url}/ui/image", params={"repo": REPO, "ref": digest(amd.manifest())}) as r:
            assert r.status == 200
            image_page = await r.text()
        async with s.get(f"{ui_env.url}/ui/image", params={"repo": REPO, "ref": sig_digest}) as r:
            assert r.status == 200
            artifact_page = await r.text()

    assert "<td>linux/amd64, linux/arm64/v8</td>" in tags, tags
    assert index_digest[7:19] in tags
    assert digest(amd.manifest()) in index_page and digest(arm.manifest()) in index_page
    referrers = image_page[image_page.index('id="referrers"'):]
    assert sig_digest in referrers and SIGNATURE in referrers, image_page
    assert SIGNATURE in artifact_page and digest(amd.manifest()) in artifact_page  # its type and subject
