"""shared/tarcopy.py: cp's tar streams stay inside their root whatever links the root holds."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from shared import tarcopy
from shared.errors import InvalidArgument, NotFound


def _tar(*entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size, info.mode = len(payload), 0o640
                tf.addfile(info, io.BytesIO(payload))
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tf.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, payload
                tf.addfile(info)
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o750
                tf.addfile(info)
    return buf.getvalue()


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "data" / "sub").mkdir(parents=True)
    (r / "data" / "a").write_bytes(b"hello")
    (r / "data" / "a").chmod(0o4751)
    os.symlink("/", r / "etc")
    os.symlink("../../../..", r / "up")
    (tmp_path / "outside").mkdir()
    return r


def test_round_trip_keeps_bytes_modes_and_links(root, tmp_path):
    os.symlink("a", root / "data" / "l")
    os.link(root / "data" / "a", root / "data" / "sub" / "hard")
    buf = io.BytesIO()
    tarcopy.write_tar(str(root), "/data", buf)
    out = tmp_path / "out"
    out.mkdir()
    tarcopy.extract(io.BytesIO(buf.getvalue()), str(out), "/", rename=("data", "copy"), keep_owner=True)
    assert (out / "copy" / "a").read_bytes() == b"hello"
    assert (out / "copy" / "a").stat().st_mode & 0o7777 == 0o4751
    assert os.readlink(out / "copy" / "l") == "a"
    assert os.path.samefile(out / "copy" / "a", out / "copy" / "sub" / "hard")


def test_contents_only_and_export_names(root):
    buf = io.BytesIO()
    tarcopy.write_tar(str(root), "/data/.", buf)
    names = tarfile.open(fileobj=io.BytesIO(buf.getvalue())).getnames()
    assert sorted(names) == ["a", "sub"]


def test_writes_through_links_stay_inside(root, tmp_path):
    data = _tar(("x", "file", b"in"))
    tarcopy.extract(io.BytesIO(data), str(root), "/etc")  # /etc -> /
    tarcopy.extract(io.BytesIO(data), str(root), "/up/up/data")  # .. stops at the root
    assert (root / "x").read_bytes() == b"in" and (root / "data" / "x").read_bytes() == b"in"
    assert not (tmp_path / "x").exists()
    hostile = _tar(("hop", "link", str(tmp_path / "outside")), ("hop/pwned", "file", b"bad"))
    tarcopy.extract(io.BytesIO(hostile), str(root), "/data")
    assert not (tmp_path / "outside" / "pwned").exists()
    assert (root / str(tmp_path / "outside").lstrip("/") / "pwned").read_bytes() == b"bad"  # inside the root


def test_climbing_entries_and_hard_links_out_are_refused(root, tmp_path):
    with pytest.raises(InvalidArgument, match="climbs out"):
        tarcopy.extract(io.BytesIO(_tar(("../../x", "file", b"bad"))), str(root), "/data")
    with pytest.raises(InvalidArgument, match="climbs out"):
        tarcopy.extract(io.BytesIO(_tar(("h", "hard", "../../../etc/passwd"))), str(root), "/data")
    assert not (tmp_path / "x").exists()


def test_reading_through_links_never_leaves_the_root(root):
    with pytest.raises(NotFound):
        tarcopy.lstat_in(str(root), "/up/etc/shadow", follow_last=True)
    rel, st, target = tarcopy.lstat_in(str(root), "/etc", follow_last=False)
    assert (rel, target) == ("etc", "/")
    buf = io.BytesIO()
    tarcopy.write_tar(str(root), "/up", buf, follow_last=True)  # the root itself, named "up"
    names = tarfile.open(fileobj=io.BytesIO(buf.getvalue())).getnames()
    assert "up/data/a" in names


def test_a_directory_is_not_replaced_by_a_file(root):
    with pytest.raises(InvalidArgument, match="cannot overwrite directory"):
        tarcopy.extract(io.BytesIO(_tar(("sub", "file", b"x"))), str(root), "/data")
