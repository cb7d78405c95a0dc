"""The dive-like analysis: what each layer adds, changes and removes, and whose bytes are wasted."""

from __future__ import annotations

import io

import pytest

from services.registry_gateway.ui.dive import LayerFiles, analyse, parse_layer_tar
from shared.errors import InvalidArgument
from tests.ui.uikit import layer_tar


def test_a_layer_tar_is_read_with_its_whiteouts():
    import tarfile
    raw = layer_tar({"./etc/conf": b"abc", "bin/.hidden": b"x"}, whiteouts=("var/log/old",))
    got = parse_layer_tar(io.BytesIO(raw))
    assert got.files == {"etc/conf": 3, "bin/.hidden": 1}
    assert got.removed == ("var/log/old",)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("data/.wh..wh..opq"))
    assert parse_layer_tar(io.BytesIO(buf.getvalue())).opaque == ("data",)


def test_garbage_is_no_layer():
    with pytest.raises(InvalidArgument):
        parse_layer_tar(io.BytesIO(b"\x1f\x8bnot really gzip"))


def test_removed_overwritten_and_opaque_files_are_waste_of_the_layer_that_added_them():
    layers = [
        LayerFiles({"big": 1000, "data/a": 10, "data/b": 20, "keep": 5, "dir/x": 7}, (), ()),
        LayerFiles({"big2": 1}, ("big", "dir"), ()),
        LayerFiles({"keep": 6, "data/c": 1}, (), ("data",)),
    ]
    a = analyse(layers)
    assert [w.wasted for w in a.layers] == [1000 + 7 + 30 + 5, 0, 0]
    assert a.wasted == 1042
    assert a.culprits[0] == ("big", 1000, 1)
    assert [p for p, _, _ in a.culprits] == ["big", "data/b", "data/a", "dir/x", "keep"]
    assert a.layers[1].removed == ["big", "dir"] and a.layers[2].changed == [("keep", 6)]
    assert ("data/c", 1) in a.layers[2].added


def test_a_path_rewritten_twice_counts_both_hidden_copies():
    a = analyse([LayerFiles({"f": 10}, (), ()), LayerFiles({"f": 20}, (), ()), LayerFiles({"f": 30}, (), ())])
    assert a.culprits == [("f", 30, 2)] and [w.wasted for w in a.layers] == [10, 20, 0]
