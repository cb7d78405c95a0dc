"""`dockyard images/tag/push/pull/rmi` between the stack and a CNCF registry on loopback."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.e2e.conftest import skopeo
from tests.support.images import oci_layout, skopeo_env, tar_dir
from tests.unit.registry_client.conftest import CncfRegistry

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dyau-img")
    root = tmp / "root"
    root.mkdir()
    (root / "data.bin").write_bytes(os.urandom(64 << 10))
    layout = tmp / "layout"
    return f"oci:{layout}:latest", oci_layout(layout, [tar_dir(root)])


@pytest.fixture(scope="module")
def far(tmp_path_factory):
    """Another registry, with htpasswd auth: user dyau-far."""
    r = CncfRegistry(tmp_path_factory.mktemp("dyau-far"), users={"dyau-far": "farpw"})
    yield r
    r.stop()


def raw_digest(stack, ref: str, creds: str, env) -> str:
    out = skopeo("inspect", "--raw", "--tls-verify=false", f"--creds={creds}", f"docker://{ref}", env=env)
    return "sha256:" + hashlib.sha256(out.stdout.encode()).hexdigest()


def test_images_tag_push_pull_rmi(stack, image, far, tmp_path):
    env = skopeo_env(tmp_path / "home")
    skopeo("copy", "--dest-tls-verify=false", f"--dest-creds={stack.admin_creds}", image[0],
           f"docker://{stack.registry_addr}/dyau/cli:1", env=env)

    listing = stack.cli("images", "dyau/cli").stdout.splitlines()
    assert listing[0].split()[:3] == ["REPOSITORY", "TAG", "IMAGE"]
    row = next(line.split() for line in listing[1:] if line.split()[:2] == ["dyau/cli", "1"])
    js = json.loads(stack.cli("images", "--json").stdout)
    assert any(i["repository"] == "dyau/cli" and i["tag"] == "1" and i["digest"] == image[1] for i in js)
    assert image[1] in stack.cli("images", "--digests", "dyau/cli").stdout
    assert row[2] == next(i for i in js if i["repository"] == "dyau/cli")["image_id"].split(":")[1][:12]

    # Within the stack: a new tag, same digest.
    stack.cli("tag", "dyau/cli:1", "dyau/cli:2")
    assert any(i["tag"] == "2" and i["digest"] == image[1]
               for i in json.loads(stack.cli("images", "--json", "dyau/cli").stdout))

    # To the other registry: refused until logged in there, then copied.
    target = f"{far.addr}/dyau/far:1"
    denied = stack.cli("tag", "dyau/cli:1", target, check=False)
    assert denied.returncode != 0
    stack.cli("login", far.addr, "-u", "dyau-far", "--password-stdin", input="farpw\n")
    stack.cli("tag", "dyau/cli:1", target)
    assert raw_digest(stack, target, "dyau-far:farpw", env) == image[1]
    out = stack.cli("push", target).stdout
    assert image[1] in out

    # From the other registry into the stack.
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds=dyau-far:farpw", image[0],
           f"docker://{far.addr}/dyau/ext:7", env=env)
    out = stack.cli("pull", f"{far.addr}/dyau/ext:7").stdout
    assert image[1] in out and out.strip().endswith(f"{far.addr}/dyau/ext:7")
    assert raw_digest(stack, f"{stack.registry_addr}/dyau/ext:7", stack.admin_creds, env) == image[1]
    assert stack.cli("pull", f"{far.addr}/dyau/nope:1", check=False).returncode != 0

    # rmi by tag; an unknown name fails.
    out = stack.cli("rmi", "dyau/ext:7").stdout
    assert "Untagged" in out
    assert not any(i["tag"] == "7" for i in json.loads(stack.cli("images", "--json", "dyau/ext").stdout))
    assert stack.cli("rmi", "dyau/never:1", check=False).returncode != 0
