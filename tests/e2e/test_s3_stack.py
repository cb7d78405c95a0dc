"""A whole stack on the S3 storage driver, against a real S3 server (SeaweedFS).

skopeo pushes a big layer through the registry, the layer-store streams it into the bucket
(segments while it arrives, a multipart assembly at commit), and its resident memory stays
bounded: the driver never holds a whole blob. The layer then pulls back byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from services.layer_store.storage.s3_client import S3Client
from tests.e2e.conftest import skopeo, start_stack, stop_stack
from tests.e2e.test_gc import env
from tests.faults.procs import service_pids
from tests.support.images import skopeo_env
from tests.unit.layer_store.s3server import make_bucket, start_weed, stop_weed

pytestmark = [pytest.mark.e2e]

MiB = 1 << 20
# 1 GiB is the figure (DOCKYARD_TEST_S3_LAYER_MB=1024); CI pushes less, and the
# bound holds either way because nothing in the path grows with the blob.
LAYER_MB = int(os.environ.get("DOCKYARD_TEST_S3_LAYER_MB", "256"))
RSS_BOUND = 100 * MiB
BUCKET = "dys3-stack"


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory):
    weed = start_weed(tmp_path_factory.mktemp("dys3-stack-weed"))
    try:
        server = weed.server
        make_bucket(server, BUCKET)
        with env(DOCKYARD_STORAGE_DRIVER="s3", DOCKYARD_S3_ENDPOINT=server.endpoint,
                 DOCKYARD_S3_BUCKET=BUCKET, DOCKYARD_S3_ACCESS_KEY=server.access_key,
                 DOCKYARD_S3_SECRET_KEY=server.secret_key, DOCKYARD_S3_PREFIX="stack"):
            s = start_stack(tmp_path_factory.mktemp("dys3-stack") / "data",
                            only=["layer-store", "registry-gateway"])
        try:
            yield s, server
        finally:
            assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")
    finally:
        stop_weed(weed)


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def big_layout(layout: Path, mb: int) -> str:
    """An OCI layout of one uncompressed layer of `mb` MiB of random bytes, written and
    hashed a MiB at a time (the test does not hold the layer either); its digest."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    h, staging = hashlib.sha256(), layout / "layer.tmp"
    with open(staging, "wb") as f:
        for _ in range(mb):
            chunk = os.urandom(MiB)
            h.update(chunk)
            f.write(chunk)
    layer = h.hexdigest()
    staging.rename(layout / "blobs" / "sha256" / layer)
    config = _blob(layout, json.dumps({"architecture": "amd64", "os": "linux",
                                       "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer}"]}}).encode())
    manifest = _blob(layout, json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{layer}",
                    "size": mb * MiB}]}).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
         "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    return f"sha256:{layer}"


def status_kib(pid: int, field: str) -> int:
    """A size from /proc/PID/status (VmRSS now, VmHWM the most ever resident), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def peak_rss(pid: int) -> int:
    return status_kib(pid, "VmHWM")


def manifest(layout: Path) -> dict:
    [m] = json.loads((layout / "index.json").read_text())["manifests"]
    return json.loads((layout / "blobs" / "sha256" / m["digest"].removeprefix("sha256:")).read_text())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


async def test_a_big_push_streams_into_s3_in_bounded_memory_and_pulls_back(s3_stack, tmp_path):
    s, server = s3_stack
    senv = skopeo_env(tmp_path / "home")
    big_layout(tmp_path / "src", LAYER_MB)
    idle = status_kib(service_pids(s)["layer-store"], "VmRSS")
    ref = f"docker://{s.registry_addr}/dys3/big:v1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", s.admin_creds, f"oci:{tmp_path / 'src'}:v1",
           ref, env=senv, timeout=600)
    peak = peak_rss(service_pids(s)["layer-store"])
    print(f"layer-store RSS: idle {idle / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB pushing {LAYER_MB} MiB")
    assert peak < RSS_BOUND, (
        f"layer-store peaked at {peak / MiB:.0f} MiB (idle {idle / MiB:.0f}) for a {LAYER_MB} MiB layer")

    out = tmp_path / "out"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", s.admin_creds, ref, f"oci:{out}:v1",
           env=senv, timeout=600)
    assert peak_rss(service_pids(s)["layer-store"]) < RSS_BOUND
    # skopeo gzips an uncompressed layer on its way to a registry: the blob stored is that.
    [desc] = manifest(out)["layers"]
    pulled = out / "blobs" / "sha256" / desc["digest"].removeprefix("sha256:")
    assert file_sha256(pulled) == desc["digest"] and pulled.stat().st_size == desc["size"] >= LAYER_MB * MiB

    # The bytes are in the bucket, under the stack's prefix, at their full size.
    client = S3Client(server.config(BUCKET))
    try:
        sizes = {o.key.rsplit("/", 1)[-1]: o.size async for o in client.list_objects("stack/blobs/")}
    finally:
        await client.close()
    assert sizes.get(desc["digest"].removeprefix("sha256:")) == desc["size"], sorted(sizes)
