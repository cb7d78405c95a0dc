"""Build outputs (local, tar, oci, docker), --iidfile, --metadata-file, --no-cache-filter and stdin inputs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.e2e.conftest import skopeo
from tests.e2e.test_build import base  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.root]

DOCKERFILE = """\
FROM busybox:latest AS base
RUN echo base > /base.txt
FROM base
COPY gone.txt hello.txt /
RUN rm /gone.txt && ln -s hello.txt /link
"""



@pytest.fixture
def ctx(tmp_path) -> Path:
    c = tmp_path / "ctx"
    c.mkdir()
    (c / "Dockerfile").write_text(DOCKERFILE)
    (c / "gone.txt").write_text("gone\n")
    (c / "hello.txt").write_text("hello\n")
    return c


def test_local_and_tar_outputs_are_the_flattened_rootfs(stack, base, ctx, tmp_path):
    out_dir, out_tar = tmp_path / "rootfs", tmp_path / "rootfs.tar"
    stack.cli("build", "-o", f"type=local,dest={out_dir}", "-o", f"type=tar,dest={out_tar}", str(ctx))
    assert (out_dir / "hello.txt").read_text() == "hello\n" and (out_dir / "base.txt").read_text() == "base\n"
    assert not (out_dir / "gone.txt").exists()  # the whiteout was applied, not copied
    assert (out_dir / "link").is_symlink() and (out_dir / "bin" / "sh").exists()
    with tarfile.open(out_tar) as tf:
        names = set(tf.getnames())
        assert tf.extractfile("hello.txt").read() == b"hello\n"
    assert "base.txt" in names and "gone.txt" not in names and not any(".wh." in n for n in names)


def test_oci_and_docker_archives_and_the_result_files(stack, base, ctx, tmp_path):
    oci, docker = tmp_path / "img.oci.tar", tmp_path / "img.docker.tar"
    iid, meta = tmp_path / "iid", tmp_path / "meta.json"
    reply = json.loads(stack.cli("build", "--json", "-t", "dybo-out:1", "-o", f"type=oci,dest={oci}",
                                 "-o", f"type=docker,dest={docker}", "--iidfile", str(iid),
                                 "--metadata-file", str(meta), str(ctx)).stdout)
    raw = skopeo("inspect", "--raw", f"oci-archive:{oci}").stdout
    assert json.loads(raw)["config"]["digest"] == reply["config_digest"]
    with tarfile.open(docker) as tf:
        entry = json.loads(tf.extractfile("manifest.json").read())[0]
        config = json.loads(tf.extractfile(entry["Config"]).read())
    assert entry["RepoTags"] == reply["tags"] and entry["Config"] == "blobs/sha256/" + reply["config_digest"][7:]
    # What `docker load` reads, skopeo reads too: every layer comes back and hashes to its diff_id.
    skopeo("copy", f"docker-archive:{docker}", f"oci:{tmp_path / 'loaded'}:x")
    index = json.loads((tmp_path / "loaded" / "index.json").read_text())
    blobs = tmp_path / "loaded/blobs/sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    loaded = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    assert loaded["rootfs"]["diff_ids"] == config["rootfs"]["diff_ids"] and len(manifest["layers"]) == len(
        config["rootfs"]["diff_ids"])

    assert iid.read_text() == reply["config_digest"]
    m = json.loads(meta.read_text())
    assert m["containerimage.digest"] == reply["digest"] and m["containerimage.config.digest"] == reply["config_digest"]
    assert m["containerimage.descriptor"]["digest"] == reply["digest"] and m["containerimage.descriptor"]["size"] > 0
    assert m["image.name"] == ",".join(reply["tags"])


def test_no_cache_filter_rebuilds_only_that_stage(stack, base, ctx):
    stack.cli("build", "-t", "dybo-ncf:1", str(ctx))
    out = json.loads(stack.cli("build", "--json", "-t", "dybo-ncf:1", "--no-cache-filter", "base", "--pull",
                               str(ctx)).stdout)
    by_text = {s["instruction"].split(" #")[0]: s["cached"] for s in out["steps"]}
    assert by_text["RUN /bin/sh -c echo base > /base.txt"] is False
    assert by_text["COPY gone.txt hello.txt /"] is True  # the same key: the final stage still hits


def test_dockerfile_and_context_from_stdin(stack, base, ctx, tmp_path):
    stdin_df = "FROM busybox:latest\nCOPY hello.txt /from-stdin-dockerfile\n"
    out = json.loads(stack.cli("build", "--json", "-t", "dybo-stdin:1", "-f", "-", str(ctx), input=stdin_df).stdout)
    assert any("from-stdin-dockerfile" in s["instruction"] for s in out["steps"])

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("Dockerfile", b"FROM busybox:latest\nCOPY payload /payload\n"), ("payload", b"p\n")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    p = subprocess.run([sys.executable, "-m", "services.cli.main", "build", "-o", f"type=local,dest={tmp_path / 'o'}",
                        "-"], env=stack.env, input=buf.getvalue(), capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "o" / "payload").read_bytes() == b"p\n"
