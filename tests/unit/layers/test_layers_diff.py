"""Directories into layers: whiteouts, opaque dirs, reproducibility, one-pass digests."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from shared.errors import InvalidArgument
from shared.layers.compression import open_decompressed
from shared.layers.diff import has_changes, write_layer
from shared.layers.unpack import unpack_layer


def _upper(root: Path) -> Path:
    """What an overlay upperdir looks like after a container deleted and changed things."""
    up = root / "upper"
    (up / "etc").mkdir(parents=True)
    (up / "etc/hosts").write_text("127.0.0.1 localhost\n")
    os.chmod(up / "etc/hosts", 0o644)
    os.mknod(up / "etc/motd", stat.S_IFCHR, os.makedev(0, 0))  # deleted file
    (up / "var/cache").mkdir(parents=True)
    os.setxattr(up / "var/cache", "trusted.overlay.opaque", b"y")  # deleted then recreated dir
    os.setxattr(up / "var/cache", "trusted.overlay.origin", b"\x00junk")  # overlay bookkeeping
    (up / "var/cache/new").write_bytes(b"n")
    (up / "bin").mkdir()
    (up / "bin/tool").write_bytes(b"\x7fELF")
    os.chown(up / "bin/tool", 1000, 1000)
    os.chmod(up / "bin/tool", 0o4755)  # after chown, which clears setuid
    os.link(up / "bin/tool", up / "bin/tool-again")
    os.symlink("tool", up / "bin/t")
    os.setxattr(up / "bin/tool", "user.origin", b"built")
    for p in [up, *up.rglob("*")]:
        os.utime(p, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    return up


def _entries(blob: bytes) -> list[tarfile.TarInfo]:
    _, reader = open_decompressed(io.BytesIO(blob))
    with tarfile.open(fileobj=io.BytesIO(reader.read())) as tf:
        return tf.getmembers()


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_digests_come_from_one_pass(tmp_path: Path, compression: str):
    up = _upper(tmp_path)
    out = io.BytesIO()
    res = write_layer(up, out, compression=compression)
    blob = out.getvalue()
    assert res.digest == "sha256:" + hashlib.sha256(blob).hexdigest() and res.size == len(blob)
    _, reader = open_decompressed(io.BytesIO(blob))
    assert res.diff_id == "sha256:" + hashlib.sha256(reader.read()).hexdigest()
    assert (res.digest == res.diff_id) == (compression == "none")
    assert res.media_type.endswith({"gzip": "+gzip", "zstd": "+zstd", "none": ".tar"}[compression])
    assert res.entries == len(_entries(blob)) and not res.is_empty


def test_whiteouts_and_opaque_dirs_become_tar_entries(tmp_path: Path):
    out = io.BytesIO()
    write_layer(_upper(tmp_path), out)
    members = {m.name: m for m in _entries(out.getvalue())}
    names = list(members)
    assert names == ["bin", "bin/t", "bin/tool", "bin/tool-again", "etc", "etc/.wh.motd", "etc/hosts",
                     "var", "var/cache", "var/cache/.wh..wh..opq", "var/cache/new"]
    assert members["etc/.wh.motd"].isreg() and members["etc/.wh.motd"].size == 0
    assert members["bin/tool-again"].islnk() and members["bin/tool-again"].linkname == "bin/tool"
    tool = members["bin/tool"]
    assert (tool.mode, tool.uid, tool.gid, tool.uname, tool.mtime) == (0o4755, 1000, 1000, "", 1_700_000_000)
    assert tool.pax_headers == {"SCHILY.xattr.user.origin": "built"}
    assert not any("overlay" in k for m in members.values() for k in m.pax_headers)


def test_round_trip_through_unpack(tmp_path: Path):
    """upper dir -> layer -> snapshot gives back the overlay whiteout and opaque xattr."""
    out = io.BytesIO()
    res = write_layer(_upper(tmp_path), out, compression="zstd")
    out.seek(0)
    snap = tmp_path / "snap"
    assert unpack_layer(out, snap, expected_diff_id=res.diff_id).entries == res.entries
    wh = os.lstat(snap / "etc/motd")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(snap / "var/cache", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE(os.lstat(snap / "bin/tool").st_mode) == 0o4755
    again = io.BytesIO()
    assert write_layer(snap, again, compression="zstd").digest == res.digest


def test_reproducible(tmp_path: Path):
    up = _upper(tmp_path)
    first, second = io.BytesIO(), io.BytesIO()
    a = write_layer(up, first)
    os.utime(up / "bin/tool", (1, 1_700_000_000))  # atime is not part of a layer
    b = write_layer(up, second)
    assert a.digest == b.digest and first.getvalue() == second.getvalue()
    other = tmp_path / "elsewhere"
    other.mkdir()
    # Same content built again in another place (new inodes, new ctimes): same layer.
    assert write_layer(_upper(other), io.BytesIO()).digest == a.digest


def test_source_date_epoch_clamps_mtimes(tmp_path: Path):
    up = _upper(tmp_path)
    out = io.BytesIO()
    write_layer(up, out, source_date_epoch=1_000)
    assert {m.mtime for m in _entries(out.getvalue())} == {1_000}


def test_base_path_and_empty(tmp_path: Path):
    staged = tmp_path / "staged"
    staged.mkdir()
    assert not has_changes(staged)
    empty = write_layer(staged, io.BytesIO())
    assert empty.is_empty and empty.entries == 0
    (staged / "app.py").write_text("print(1)")
    assert has_changes(staged)
    out = io.BytesIO()
    res = write_layer(staged, out, base_path="/srv/app/")
    assert [m.name for m in _entries(out.getvalue())] == ["srv/app", "srv/app/app.py"]
    assert res.entries == 2
    with pytest.raises(InvalidArgument):
        write_layer(staged, io.BytesIO(), base_path="../x")


def test_fifo_cannot_be_layered(tmp_path: Path):
    d = tmp_path / "d"
    d.mkdir()
    os.mkfifo(d / "pipe")
    with pytest.raises(InvalidArgument, match="pipe"):
        write_layer(d, io.BytesIO())
