"""Real skopeo against `dockyard up`: push, inspect, list tags, pull, delete; Docker schema2;
two registry-gateway processes on one NATS."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, skopeo
from tests.support.images import oci_layout

pytestmark = pytest.mark.e2e
BUSYBOX = Path("/bin/busybox")


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """An OCI layout (tag `v1`) whose one layer holds the static busybox."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.add(BUSYBOX if BUSYBOX.exists() else sys.executable, arcname="bin/busybox")
    root = tmp_path_factory.mktemp("dyrg-layout")
    oci_layout(root, [raw.getvalue()], tag="v1", cmd=["/bin/busybox", "sh"])
    return root


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    # skopeo's blob-info cache in a private dir, so one test's pushes never skip another's blobs
    return {**os.environ, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}


def _digest_of(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    return next(m["digest"] for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_skopeo_round_trip(stack, layout, env, tmp_path, fmt):
    ref = f"docker://{stack.registry_addr}/dyrg/e2e-{fmt}"
    creds = ["--creds", stack.admin_creds]
    push = ["copy", "--dest-tls-verify=false", "--dest-creds", stack.admin_creds]
    if fmt == "v2s2":
        push += ["--format", "v2s2"]
    skopeo(*push, f"oci:{layout}:v1", f"{ref}:v1", env=env)
    skopeo(*push, f"oci:{layout}:v1", f"{ref}:v2", env=env)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", *creds, f"{ref}:v1", env=env).stdout
    want = ("application/vnd.docker.distribution.manifest.v2+json" if fmt == "v2s2"
            else "application/vnd.oci.image.manifest.v1+json")
    assert json.loads(raw)["mediaType"] == want
    info = json.loads(skopeo("inspect", "--tls-verify=false", *creds, f"{ref}:v1", env=env).stdout)
    assert info["Digest"] == "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", *creds, ref, env=env).stdout)
    assert tags["Tags"] == ["v1", "v2"]

    out = tmp_path / "out"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", stack.admin_creds, f"{ref}:v1", f"oci:{out}:v1", env=env)
    pulled = json.loads((out / "blobs" / "sha256" / _digest_of(out, "v1")[7:]).read_text())
    original = json.loads((layout / "blobs" / "sha256" / _digest_of(layout, "v1")[7:]).read_text())
    assert [x["digest"] for x in pulled["layers"]] == [x["digest"] for x in original["layers"]]
    if fmt == "oci":
        assert _digest_of(out, "v1") == _digest_of(layout, "v1"), "the manifest comes back byte for byte"

    skopeo("delete", "--tls-verify=false", *creds, f"{ref}@{info['Digest']}", env=env)
    gone = skopeo("inspect", "--tls-verify=false", *creds, f"{ref}:v2", env=env, check=False)
    assert gone.returncode != 0, "deleting the manifest removed the tags pointing at it"


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_two_gateway_processes_act_as_one_registry(stack, layout, env, tmp_path):
    # bound here and handed over, as `dockyard up` does: the port is known before it starts
    sock = socket.create_server(("127.0.0.1", 0))
    addr = f"127.0.0.1:{sock.getsockname()[1]}"
    log = open(tmp_path / "gw2.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", "registry-gateway",
                             "--registry-addr", addr],
                            env={**stack.env, "DOCKYARD_REGISTRY_ADDR": addr, "DOCKYARD_NATS_URL": stack.nats_url,
                                 "DOCKYARD_REGISTRY_FD": str(sock.fileno())}, pass_fds=(sock.fileno(),),
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sock.close()
    try:
        _wait_http(f"http://{addr}/v2/")
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", stack.admin_creds, f"oci:{layout}:v1",
               f"docker://{stack.registry_addr}/dyrg/replicas:v1", env=env)
        out = tmp_path / "out"
        skopeo("copy", "--src-tls-verify=false", "--src-creds", stack.admin_creds,
               f"docker://{addr}/dyrg/replicas:v1", f"oci:{out}:v1", env=env)
        assert _digest_of(out, "v1") == _digest_of(layout, "v1")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0 or proc.returncode == -15, (tmp_path / "gw2.log").read_text()
