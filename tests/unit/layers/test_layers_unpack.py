"""Unpacking good layers: metadata kept, whiteouts converted, compression detected, diff_id checked."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from shared.errors import AlreadyExists, InvalidArgument
from shared.layers.compression import (
    Compression,
    compression_of_media_type,
    detect,
    media_type,
    open_compressor,
    open_decompressed,
)
from shared.layers.unpack import unpack_layer
from shared.oci.digest import Digest
from tests.unit.layers.layers_tarkit import compress, entry, make_tar, sha256

CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # cap_net_bind_service


def _rich_layer() -> bytes:
    return make_tar([
        entry("./", "dir", mode=0o755, mtime=1_600_000_000),
        entry("usr/", "dir", mode=0o755, mtime=1_600_000_001),
        entry("usr/bin/", "dir", mode=0o755, uid=0, gid=0, mtime=1_600_000_002),
        entry("usr/bin/su", data=b"#!su", mode=0o4755, mtime=1_600_000_003),
        entry("usr/bin/ping", data=b"ping", mode=0o755,
              pax={"SCHILY.xattr.security.capability": CAP.decode("utf-8", "surrogateescape"),
                   "SCHILY.xattr.user.note": "hello",
                   "SCHILY.xattr.trusted.overlay.redirect": "/etc"}),  # never taken from a layer
        entry("usr/bin/sh", "symlink", link="/bin/busybox", uid=7, gid=8),
        entry("usr/bin/su2", "hardlink", link="usr/bin/su"),
        entry("home/", "dir", mode=0o1777),
        entry("home/u/", "dir", mode=0o700, uid=1234, gid=5678),
        entry("home/u/f", data=b"data" * 1000, mode=0o600, uid=1234, gid=5678, mtime=1_234_567_890),
        entry("implicit/parent/file", data=b"p"),  # parents created without entries
    ])


@pytest.mark.parametrize("how", ["none", "gzip", "zstd"])
def test_unpack_keeps_metadata(tmp_path: Path, how: str):
    tar = _rich_layer()
    dest = tmp_path / "dest"
    res = unpack_layer(io.BytesIO(compress(tar, how)), dest)
    assert res.diff_id == sha256(tar) and res.size == len(tar) and res.entries == 11

    su = os.lstat(dest / "usr/bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755 and su.st_mtime == 1_600_000_003
    assert os.lstat(dest / "usr/bin/su2").st_ino == su.st_ino and su.st_nlink == 2
    assert os.getxattr(dest / "usr/bin/ping", "security.capability") == CAP
    assert os.getxattr(dest / "usr/bin/ping", "user.note") == b"hello"
    assert "trusted.overlay.redirect" not in os.listxattr(dest / "usr/bin/ping")
    sh = os.lstat(dest / "usr/bin/sh")
    assert stat.S_ISLNK(sh.st_mode) and os.readlink(dest / "usr/bin/sh") == "/bin/busybox"
    assert (sh.st_uid, sh.st_gid) == (7, 8)
    u = os.lstat(dest / "home/u")
    assert (u.st_uid, u.st_gid, stat.S_IMODE(u.st_mode)) == (1234, 5678, 0o700)
    assert stat.S_IMODE(os.lstat(dest / "home").st_mode) == 0o1777
    f = os.lstat(dest / "home/u/f")
    assert (f.st_uid, f.st_mtime, f.st_size) == (1234, 1_234_567_890, 4000)
    # Directory mtimes survive the creation of their children.
    assert os.lstat(dest / "usr/bin").st_mtime == 1_600_000_002
    assert os.lstat(dest).st_mtime == 1_600_000_000
    assert stat.S_IMODE(os.lstat(dest / "implicit/parent").st_mode) == 0o755


def test_whiteouts_become_overlay_whiteouts(tmp_path: Path):
    tar = make_tar([
        entry("etc/", "dir"),
        entry("etc/.wh.motd", data=b""),
        entry("var/", "dir"),
        entry("var/cache/", "dir"),
        entry("var/cache/.wh..wh..opq", data=b""),
        entry("var/cache/kept", data=b"k"),
        entry("same/", "dir"),
        entry("same/file", data=b"mine"),
        entry("same/.wh.file", data=b""),  # same layer: the whiteout hides lower layers only
        entry(".wh..wh.plnk/", "dir"),  # aufs bookkeeping: ignored
    ])
    dest = tmp_path / "dest"
    unpack_layer(io.BytesIO(tar), dest)
    wh = os.lstat(dest / "etc/motd")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert not (dest / "etc/.wh.motd").exists()
    assert os.getxattr(dest / "var/cache", "trusted.overlay.opaque") == b"y"
    assert (dest / "var/cache/kept").read_bytes() == b"k"
    assert (dest / "same/file").read_bytes() == b"mine"
    assert sorted(os.listdir(dest)) == ["etc", "same", "var"]


def test_later_entries_replace_earlier_ones(tmp_path: Path):
    tar = make_tar([
        entry("x", data=b"file"),
        entry("x/", "dir"),
        entry("x/inner", data=b"1"),
        entry("x", "symlink", link="elsewhere"),
        entry("d/", "dir", mode=0o700),
        entry("d/keep", data=b"k"),
        entry("d/", "dir", mode=0o750),  # a directory over a directory merges
    ])
    dest = tmp_path / "dest"
    unpack_layer(io.BytesIO(tar), dest)
    assert os.readlink(dest / "x") == "elsewhere"
    assert (dest / "d/keep").read_bytes() == b"k"
    assert stat.S_IMODE(os.lstat(dest / "d").st_mode) == 0o750


def test_diff_id_verified(tmp_path: Path):
    tar = make_tar([entry("a", data=b"a")])
    good = Digest(sha256(tar))
    assert unpack_layer(io.BytesIO(compress(tar, "gzip")), tmp_path / "ok", expected_diff_id=good).diff_id == good
    wrong = Digest("sha256:" + "0" * 64)
    with pytest.raises(InvalidArgument, match="diff_id mismatch") as err:
        unpack_layer(io.BytesIO(compress(tar, "gzip")), tmp_path / "bad", expected_diff_id=wrong)
    assert err.value.detail_code == "DIGEST_INVALID"
    assert not (tmp_path / "bad").exists()


def test_diff_id_covers_bytes_after_the_end_marker(tmp_path: Path):
    tar = make_tar([entry("a", data=b"a")], trailer=bytes(4096))
    res = unpack_layer(io.BytesIO(tar), tmp_path / "d")
    assert res.diff_id == sha256(tar) and res.size == len(tar)


@pytest.mark.parametrize("how,expected", [("gzip", Compression.GZIP), ("zstd", Compression.ZSTD),
                                          ("none", Compression.NONE)])
def test_detection_and_streams(how: str, expected: Compression):
    payload = os.urandom(3000) * 100
    blob = compress(payload, how)
    assert detect(blob[:4]) is expected
    comp, reader = open_decompressed(io.BytesIO(blob))
    assert comp is expected and reader.read() == payload
    out = io.BytesIO()
    w = open_compressor(out, expected)
    w.write(payload)
    w.close()
    assert not out.closed
    assert detect(out.getvalue()[:4]) is expected
    assert open_decompressed(io.BytesIO(out.getvalue()))[1].read() == payload


def test_media_types():
    assert media_type("gzip") == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert media_type("zstd") == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert media_type("none") == "application/vnd.oci.image.layer.v1.tar"
    assert media_type("gzip", docker=True) == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert compression_of_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip") is Compression.GZIP
    with pytest.raises(InvalidArgument):
        compression_of_media_type("application/vnd.oci.image.config.v1+json")
    with pytest.raises(InvalidArgument):
        media_type("brotli")


def test_dest_must_be_new(tmp_path: Path):
    (tmp_path / "dest").mkdir()
    with pytest.raises(AlreadyExists):
        unpack_layer(io.BytesIO(make_tar([])), tmp_path / "dest")
    assert (tmp_path / "dest").is_dir()  # the caller's directory is not removed
