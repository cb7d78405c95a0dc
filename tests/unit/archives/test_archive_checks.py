"""Archive reading and writing without a registry: hostile paths, links, duplicates, compression."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from shared.archives.load import Archive, open_input, plan
from shared.archives.save import _Decompressor, blob_name
from shared.archives.tarwriter import TarWriter
from shared.errors import InvalidArgument
from shared.layers.compression import Compression


def _layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("hello")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"hi\n"))
    return buf.getvalue()


def _docker_archive(path, *, layer_path="blobs/sha256/L", extra=(), layer=None, tags=("app:1",)):
    layer = _layer() if layer is None else layer
    diff = "sha256:" + hashlib.sha256(_layer()).hexdigest()
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    with tarfile.open(path, "w") as tf:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        add("manifest.json", json.dumps([{"Config": "c.json", "RepoTags": list(tags),
                                          "Layers": [layer_path]}]).encode())
        add("c.json", cfg)
        if layer_path == "blobs/sha256/L":
            add("blobs/sha256/L", layer)
        for ti, data in extra:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return diff


def test_a_docker_archive_plans_one_oci_manifest(tmp_path):
    diff = _docker_archive(tmp_path / "a.tar")
    (img,) = plan(Archive(tmp_path / "a.tar"))
    m = json.loads(img.manifest)
    assert img.names == ["app:1"] and m["layers"][0]["digest"] == diff
    assert m["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    # a gzip layer is hashed as stored
    gz = gzip.compress(_layer())
    _docker_archive(tmp_path / "g.tar", layer=gz)
    (img,) = plan(Archive(tmp_path / "g.tar"))
    layer = json.loads(img.manifest)["layers"][0]
    assert layer["digest"] == "sha256:" + hashlib.sha256(gz).hexdigest() and layer["mediaType"].endswith("+gzip")


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "a/../../x"])
def test_paths_out_of_the_archive_are_refused(tmp_path, path):
    _docker_archive(tmp_path / "a.tar", layer_path=path)
    with pytest.raises(InvalidArgument, match="hostile archive"):
        plan(Archive(tmp_path / "a.tar"))


def test_links_and_duplicates_are_refused(tmp_path):
    link = tarfile.TarInfo("l.tar")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    _docker_archive(tmp_path / "s.tar", layer_path="l.tar", extra=[(link, None)])
    with pytest.raises(InvalidArgument, match="symlink"):
        plan(Archive(tmp_path / "s.tar"))
    hard = tarfile.TarInfo("h.tar")
    hard.type, hard.linkname = tarfile.LNKTYPE, "c.json"
    _docker_archive(tmp_path / "h.tar", layer_path="h.tar", extra=[(hard, None)])
    with pytest.raises(InvalidArgument, match="hard link"):
        plan(Archive(tmp_path / "h.tar"))
    again = tarfile.TarInfo("blobs/sha256/L")
    again.size = 3
    _docker_archive(tmp_path / "d.tar", extra=[(again, b"bad")])
    with pytest.raises(InvalidArgument, match="twice"):
        plan(Archive(tmp_path / "d.tar"))


def test_gzip_archives_are_opened_and_junk_is_refused(tmp_path):
    _docker_archive(tmp_path / "a.tar")
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress((tmp_path / "a.tar").read_bytes()))
    work = tmp_path / "work"
    work.mkdir()
    p = open_input(tmp_path / "a.tar.gz", work)
    assert p != tmp_path / "a.tar.gz" and p.read_bytes() == (tmp_path / "a.tar").read_bytes()
    (tmp_path / "junk").write_bytes(b"\0" * 10 + b"junk" * 300)
    with pytest.raises(InvalidArgument):
        plan(Archive(tmp_path / "junk"))


def test_tar_writer_patches_sizes_and_decompressor_spans_members(tmp_path):
    with open(tmp_path / "o.tar", "wb") as f:
        tw = TarWriter(f)
        tw.begin(blob_name("sha256:" + "a" * 64))
        tw.write(b"x" * 1000)
        tw.write(b"y" * 24)
        assert tw.end() == 1024
        tw.add_bytes("small", b"z")
        tw.close()
    with tarfile.open(tmp_path / "o.tar") as tf:
        assert [(m.name, m.size) for m in tf.getmembers()] == [("blobs/sha256/" + "a" * 64, 1024), ("small", 1)]
        assert tf.extractfile("small").read() == b"z"
    two = gzip.compress(b"one ") + gzip.compress(b"two")
    d = _Decompressor(Compression.GZIP)
    assert b"".join(d.feed(two[i:i + 7]) for i in range(0, len(two), 7)) == b"one two"


def test_member_names_are_taken_as_written(tmp_path):
    """`./x` is `x`; a member called `../x` is not `x` (nor is `.x`)."""
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        for name in ("./manifest.json", "../c.json", ".hidden"):
            ti = tarfile.TarInfo(name)
            ti.size = 2
            tf.addfile(ti, io.BytesIO(b"[]"))
    a = Archive(tmp_path / "a.tar")
    assert a.has("manifest.json") and not a.has("c.json") and not a.has("hidden") and a.has(".hidden")
