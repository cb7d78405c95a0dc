"""`save`/`load` (issue 12) against a whole stack and real skopeo: round trips keep digests,
skopeo reads what `save` writes and `load` reads what skopeo writes, hostile archives are refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.e2e.conftest import skopeo
from tests.support.images import busybox_rootfs, oci_layout, skopeo_env, tar_dir

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def pushed(stack, tmp_path_factory):
    """Two images in the stack registry (sharing the busybox layer), pushed by skopeo."""
    root = tmp_path_factory.mktemp("archives")
    env = skopeo_env(root / "home")
    base = tar_dir(busybox_rootfs(root / "rootfs"))
    extra = io.BytesIO()
    with tarfile.open(fileobj=extra, mode="w") as tf:
        ti = tarfile.TarInfo("hello.txt")
        data = b"hello from arch-b\n"
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    oci_layout(root / "a", [base], tag="1")
    oci_layout(root / "b", [base, extra.getvalue()], tag="2")
    _go_ordered_config(root / "b")
    for name, layout, tag in (("arch-a", "a", "1"), ("arch-b", "b", "2")):
        skopeo("copy", "--dest-tls-verify=false", f"--dest-creds={stack.admin_creds}", f"oci:{root / layout}:{tag}",
               f"docker://{stack.registry_addr}/library/{name}:{tag}", env=env)
    return root, env


def _go_ordered_config(layout: Path) -> None:
    """The config as Go's encoding/json writes an OCI config (field order, no spaces): skopeo
    re-encodes a config when it turns a docker-archive's manifest into an OCI one, so only
    such a config keeps its digest through `skopeo copy docker-archive:... oci:...`."""
    from tests.support.images import write_blob
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    c = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    ordered = {"architecture": c["architecture"], "os": c["os"],
               "config": {"Env": c["config"]["Env"], "Cmd": c["config"]["Cmd"]}, "rootfs": c["rootfs"]}
    manifest["config"].update(write_blob(layout, json.dumps(ordered, separators=(",", ":")).encode()))
    m = write_blob(layout, json.dumps(manifest).encode())
    index["manifests"][0].update(m)
    (layout / "index.json").write_text(json.dumps(index))


def _inspect(stack, env, ref: str) -> dict:
    out = skopeo("inspect", "--tls-verify=false", f"--creds={stack.admin_creds}", f"docker://{ref}", env=env)
    return json.loads(out.stdout)


def _config_digest(stack, env, ref: str) -> str:
    out = skopeo("inspect", "--config", "--raw", "--tls-verify=false", f"--creds={stack.admin_creds}",
                 f"docker://{ref}", env=env)
    return "sha256:" + hashlib.sha256(out.stdout.encode()).hexdigest()


def test_save_writes_docker_and_oci_and_skopeo_reads_the_same_digests(stack, pushed, tmp_path):
    root, env = pushed
    out = tmp_path / "saved.tar"
    stack.cli("save", "-o", str(out), "arch-a:1", "arch-b:2")
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
        manifest = json.load(tf.extractfile("manifest.json"))
        index = json.load(tf.extractfile("index.json"))
        assert {"oci-layout", "index.json", "manifest.json", "repositories"} <= names
        assert [e["RepoTags"] for e in manifest] == [["arch-a:1"], ["arch-b:2"]]
        shared = manifest[0]["Layers"][0]
        assert manifest[1]["Layers"][0] == shared and tf.getnames().count(shared) == 1  # written once
        for e in manifest:  # layers are uncompressed tars whose digest is their file name
            for layer in e["Layers"]:
                data = tf.extractfile(layer).read()
                assert data[:2] != b"\x1f\x8b"
                assert hashlib.sha256(data).hexdigest() == layer.rsplit("/", 1)[1]
    cfg_b = _config_digest(stack, env, f"{stack.registry_addr}/library/arch-b:2")
    assert manifest[1]["Config"] == "blobs/sha256/" + cfg_b.split(":")[1]
    assert [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]] == [
        "docker.io/library/arch-a:1", "docker.io/library/arch-b:2"]
    # skopeo reads the docker archive: the same config and layer digests
    skopeo("copy", "--dest-oci-accept-uncompressed-layers", f"docker-archive:{out}:arch-b:2",
           f"oci:{tmp_path / 'oci'}:b", env=env)
    oci_index = json.loads((tmp_path / "oci" / "index.json").read_text())
    m = json.loads((tmp_path / "oci" / "blobs" / "sha256" / oci_index["manifests"][0]["digest"].split(":")[1])
                   .read_text())
    assert m["config"]["digest"] == cfg_b
    assert ["blobs/sha256/" + x["digest"].split(":")[1] for x in m["layers"]] == manifest[1]["Layers"]
    # and the OCI layout in the same tar
    skopeo("copy", f"oci-archive:{out}:2", f"oci:{tmp_path / 'oci2'}:b", env=env)


def test_load_round_trip_keeps_digests_and_names_the_stack(stack, pushed, tmp_path):
    root, env = pushed
    saved = tmp_path / "saved.tar"
    stack.cli("save", "-o", str(saved), "arch-b:2")
    cfg = _config_digest(stack, env, f"{stack.registry_addr}/library/arch-b:2")
    stack.cli("rmi", "arch-b:2")
    gz = tmp_path / "saved.tar.gz"
    gz.write_bytes(gzip.compress(saved.read_bytes(), compresslevel=1))
    out = stack.cli("load", "-i", str(gz)).stdout
    assert "Loaded image: library/arch-b:2" in out and f"{stack.registry_addr}/library/arch-b:2" in out
    assert "stack registry" in out
    assert _config_digest(stack, env, f"{stack.registry_addr}/library/arch-b:2") == cfg
    with tarfile.open(saved) as tf:
        idx = json.load(tf.extractfile("index.json"))
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"--creds={stack.admin_creds}",
                 f"docker://{stack.registry_addr}/library/arch-b:2", env=env).stdout
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == idx["manifests"][0]["digest"]
    # saving the loaded image again gives the same bytes
    again = tmp_path / "again.tar"
    stack.cli("save", "-o", str(again), "arch-b:2")
    assert again.read_bytes() == saved.read_bytes()


def test_an_archive_skopeo_wrote_loads_and_runs(stack, pushed, tmp_path):
    root, env = pushed
    arch = tmp_path / "from-skopeo.tar"
    skopeo("copy", f"oci:{root / 'b'}:2", f"docker-archive:{arch}:skopeo/made:7", env=env)
    out = stack.cli("load", "-i", str(arch)).stdout
    assert "Loaded image: skopeo/made:7" in out
    r = stack.cli("run", "--rm", "--network", "none", "skopeo/made:7", "cat", "/hello.txt")
    assert r.stdout == "hello from arch-b\n"
    oci_arch = tmp_path / "oci-archive.tar"
    skopeo("copy", f"oci:{root / 'a'}:1", f"oci-archive:{oci_arch}:ocimade:3", env=env)
    out = stack.cli("load", "-q", "-i", str(oci_arch)).stdout
    assert "Loaded image: library/ocimade:3" in out


def test_save_to_a_pipe_and_load_from_one(stack, pushed, tmp_path):
    import subprocess
    import sys
    piped = tmp_path / "piped.tar"
    with open(piped, "wb") as f:
        subprocess.run([sys.executable, "-m", "services.cli.main", "save", "arch-a:1"], env=stack.env, stdout=f,
                       check=True, timeout=120)
    with tarfile.open(piped) as tf:
        assert json.load(tf.extractfile("manifest.json"))[0]["RepoTags"] == ["arch-a:1"]
    gz = tmp_path / "piped.tar.gz"
    gz.write_bytes(gzip.compress(piped.read_bytes(), compresslevel=1))
    with open(gz, "rb") as f:
        p = subprocess.run([sys.executable, "-m", "services.cli.main", "load"], env=stack.env, stdin=f,
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Loaded image: library/arch-a:1" in p.stdout


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w") as tf:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_hostile_archives_are_refused(stack, tmp_path):
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                                                                         "diff_ids": ["sha256:" + "0" * 64]}}).encode()
    cases = {
        "traversal": [(_file("manifest.json"), json.dumps([{"Config": "c.json", "Layers": ["../../etc/passwd"],
                                                            "RepoTags": ["evil:1"]}]).encode()), (_file("c.json"), cfg)],
        "absolute": [(_file("manifest.json"), json.dumps([{"Config": "/etc/passwd", "Layers": [],
                                                           "RepoTags": ["evil:1"]}]).encode())],
    }
    link = tarfile.TarInfo("layer.tar")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    cases["symlink"] = [(_file("manifest.json"), json.dumps([{"Config": "c.json", "Layers": ["layer.tar"],
                                                              "RepoTags": ["evil:1"]}]).encode()),
                        (_file("c.json"), cfg), (link, None)]
    hard = tarfile.TarInfo("c.json")
    hard.type, hard.linkname = tarfile.LNKTYPE, "manifest.json"
    cases["hardlink"] = [(_file("manifest.json"), json.dumps([{"Config": "c.json", "Layers": [],
                                                               "RepoTags": ["evil:1"]}]).encode()), (hard, None)]
    for what, members in cases.items():
        p = tmp_path / f"{what}.tar"
        _tar(p, members)
        r = stack.cli("load", "-i", str(p), check=False)
        assert r.returncode != 0, what
        assert "hostile archive" in r.stderr, (what, r.stderr)
    r = stack.cli("load", "-i", str(tmp_path / "traversal.tar"), check=False)
    assert "../../etc/passwd" in r.stderr
    (tmp_path / "junk.tar").write_bytes(os.urandom(2048))
    assert stack.cli("load", "-i", str(tmp_path / "junk.tar"), check=False).returncode != 0
    assert "evil" not in stack.cli("images").stdout


def test_system_df_on_a_whole_stack_shows_the_build_cache(stack):
    got = json.loads(stack.cli("system", "df", "--json").stdout)
    assert [h["host"] for h in got["hosts"]] and got["build_cache"] is not None
    assert got["build_cache"]["total"] >= got["build_cache"]["active"] >= 0
    table = stack.cli("system", "df").stdout
    assert "Build Cache" in table and "(builder)" in table and "Local Volumes" in table


def test_a_reload_puts_back_a_tag_moved_since_and_keeps_one_already_there(stack, pushed, tmp_path):
    root, env = pushed

    def digest_of(ref: str) -> str:
        raw = skopeo("inspect", "--raw", "--tls-verify=false", f"--creds={stack.admin_creds}",
                     f"docker://{stack.registry_addr}/{ref}", env=env).stdout
        return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()

    def push(layout: str, tag: str) -> None:
        skopeo("copy", "--dest-tls-verify=false", f"--dest-creds={stack.admin_creds}", f"oci:{root / layout}:{tag}",
               f"docker://{stack.registry_addr}/library/reload:1", env=env)

    push("a", "1")
    saved = tmp_path / "saved.tar"
    stack.cli("save", "-o", str(saved), "reload:1")
    with tarfile.open(saved) as tf:
        want = json.load(tf.extractfile("index.json"))["manifests"][0]["digest"]
    for _ in range(2):  # the first puts the archive's manifest (uncompressed layers), the second finds it there
        assert "Loaded image: library/reload:1" in stack.cli("load", "-i", str(saved)).stdout
        assert digest_of("library/reload:1") == want
    push("b", "2")  # the tag moves to another image: loading the archive moves it back
    assert digest_of("library/reload:1") != want
    stack.cli("load", "-q", "-i", str(saved))
    assert digest_of("library/reload:1") == want
