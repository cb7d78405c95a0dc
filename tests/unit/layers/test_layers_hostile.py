"""Hostile layers: each is refused with an error naming the entry, and nothing outside dest changes."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from tests.unit.layers.layers_tarkit import compress, entry, make_tar, tree_state

from shared.errors import InvalidArgument
from shared.layers.unpack import unpack_layer


@pytest.fixture
def box(tmp_path: Path):
    """`box/dest` is where layers go; `box/sentinel` (next to it) must never change."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "secret").write_text("keep me")
    (sentinel / "sub").mkdir()
    before = tree_state(tmp_path)
    yield tmp_path, sentinel
    after = {k: v for k, v in tree_state(tmp_path).items() if k.split("/")[0] != "dest"}
    assert after == before, "something outside dest changed"


def _hostile_cases(sentinel: Path) -> list[tuple[str, list, str]]:
    s = str(sentinel)
    return [
        ("dotdot", [entry("../evil", data=b"x")], "'..' component"),
        ("absolute", [entry("/abs/evil", data=b"x")], "absolute path"),
        ("absolute-into-sentinel", [entry(f"{s}/evil", data=b"x")], "absolute path"),
        ("inner-dotdot", [entry("a/", "dir"), entry("a/../../evil", data=b"x")], "'..' component"),
        ("symlink-abs-then-write",
         [entry("s", "symlink", link=s), entry("s/evil", data=b"x")], "goes through symlink s"),
        ("symlink-tmp-then-write",
         [entry("s", "symlink", link="/tmp"), entry("s/dyly-evil", data=b"x")], "goes through symlink s"),
        ("symlink-dotdot-then-write",
         [entry("s", "symlink", link=".."), entry("s/sentinel/evil", data=b"x")], "goes through symlink s"),
        ("symlink-nested-then-dir",
         [entry("d/", "dir"), entry("d/s", "symlink", link="../.."), entry("d/s/x/", "dir")],
         "goes through symlink d/s"),
        ("hardlink-etc-passwd", [entry("pw", "hardlink", link="/etc/passwd")], "absolute path"),
        ("hardlink-dotdot", [entry("pw", "hardlink", link="../sentinel/secret")], "'..' component"),
        ("hardlink-through-symlink",
         [entry("s", "symlink", link=s), entry("pw", "hardlink", link="s/secret")], "goes through symlink s"),
        ("hardlink-missing", [entry("pw", "hardlink", link="nothing")], "does not exist"),
        ("chardev", [entry("dev/null", "chr", dev=(1, 3))], "device nodes and FIFOs"),
        ("blockdev", [entry("sda", "blk", dev=(8, 0))], "device nodes and FIFOs"),
        ("whiteout-shaped-chardev", [entry("gone", "chr", dev=(0, 0))], "device nodes and FIFOs"),
        ("fifo", [entry("pipe", "fifo")], "device nodes and FIFOs"),
        ("whiteout-of-dotdot", [entry(".wh...", data=b"")], "whiteout of nothing"),
    ]


_CASE_IDS = [c[0] for c in _hostile_cases(Path("/x"))]


@pytest.mark.parametrize("case", _CASE_IDS)
@pytest.mark.parametrize("how", ["none", "gzip"])
def test_hostile_layer_is_refused(box, case: str, how: str):
    root, sentinel = box
    _, entries, message = next(c for c in _hostile_cases(sentinel) if c[0] == case)
    layer = compress(make_tar(entries), how)
    dest = root / "dest"
    with pytest.raises(InvalidArgument) as err:
        unpack_layer(io.BytesIO(layer), dest)
    assert message in str(err.value)
    assert not dest.exists(), "a failed unpack must leave nothing behind"
    assert not os.path.lexists("/tmp/dyly-evil")


def test_size_bomb_refused_before_it_is_written(box):
    root, _ = box
    bomb = compress(make_tar([entry("zeros", data=bytes(8 << 20))]), "gzip")
    assert len(bomb) < 64 << 10  # a few KB that would expand to 8 MiB
    with pytest.raises(InvalidArgument, match="'zeros'.*larger than the limit of 1048576"):
        unpack_layer(io.BytesIO(bomb), root / "dest", max_size=1 << 20)
    assert not (root / "dest").exists()


def test_stream_size_bounded_even_without_files(box):
    root, _ = box
    # Only padding after the end marker: no header announces it, the reader must count.
    layer = compress(make_tar([entry("a", data=b"x")], trailer=bytes(4 << 20)), "zstd")
    with pytest.raises(InvalidArgument, match="larger than the limit"):
        unpack_layer(io.BytesIO(layer), root / "dest", max_size=1 << 20)
    assert not (root / "dest").exists()


def test_too_many_entries(box):
    root, _ = box
    layer = make_tar([entry(f"f{i}", data=b"") for i in range(50)])
    with pytest.raises(InvalidArgument, match="more than 10 entries"):
        unpack_layer(io.BytesIO(layer), root / "dest", max_entries=10)
    assert not (root / "dest").exists()


def test_huge_pax_record_refused(box):
    root, _ = box
    layer = make_tar([entry("a", data=b"x", pax={"comment": "y" * (2 << 20)})])
    with pytest.raises(InvalidArgument, match="over the 1 MiB limit"):
        unpack_layer(io.BytesIO(layer), root / "dest")


@pytest.mark.parametrize("cut", [700, 1300])
def test_truncated_or_corrupt_tar_refused(box, cut: int):
    root, _ = box
    tar = make_tar([entry("a", data=b"x" * 600), entry("b", data=b"y" * 10)])
    with pytest.raises(InvalidArgument):
        unpack_layer(io.BytesIO(tar[:cut]), root / "dest")
    corrupt = bytearray(tar)
    corrupt[1536 + 100] ^= 0xFF  # second header's mode field: checksum no longer matches
    with pytest.raises(InvalidArgument, match="invalid tar header"):
        unpack_layer(io.BytesIO(bytes(corrupt)), root / "dest")
    assert not (root / "dest").exists()


def test_malformed_pax_record_refused(box):
    """tarfile would end the archive quietly there, unpacking only the entries before it."""
    root, _ = box
    tar = make_tar([entry("a", data=b"1"), entry("b", data=b"2", pax={"comment": "zzz"}), entry("c", data=b"3")])
    at = tar.index(b"15 comment=zzz")
    bad = tar[:at] + b"00" + tar[at + 2:]
    with pytest.raises(InvalidArgument, match="invalid tar header"):
        unpack_layer(io.BytesIO(bad), root / "dest")
    assert not (root / "dest").exists()


def test_corrupt_gzip_refused(box):
    root, _ = box
    layer = bytearray(compress(make_tar([entry("a", data=os.urandom(5000))]), "gzip"))
    layer[len(layer) // 2] ^= 0xFF
    with pytest.raises(InvalidArgument, match="corrupt gzip"):
        unpack_layer(io.BytesIO(bytes(layer)), root / "dest")
    assert not (root / "dest").exists()


def test_replacing_a_symlink_never_writes_through_it(box):
    """Not refused, but safe: a later entry of the same name replaces the symlink itself."""
    root, sentinel = box
    layer = make_tar([
        entry("f", "symlink", link=str(sentinel / "secret")),
        entry("f", data=b"overwritten?"),
        entry("d", "symlink", link=str(sentinel)),
        entry("d/", "dir"),
        entry("d/evil", data=b"x"),
        entry("l", "symlink", link=str(sentinel / "secret")),
        entry("l2", "hardlink", link="l"),  # a hardlink to a symlink is that symlink again
    ])
    dest = root / "dest"
    unpack_layer(io.BytesIO(layer), dest)
    assert (dest / "f").read_bytes() == b"overwritten?" and not (dest / "f").is_symlink()
    assert (dest / "d").is_dir() and not (dest / "d").is_symlink()
    assert (dest / "d" / "evil").read_bytes() == b"x"
    assert os.readlink(dest / "l2") == str(sentinel / "secret")
    assert os.lstat(dest / "l2").st_ino == os.lstat(dest / "l").st_ino
