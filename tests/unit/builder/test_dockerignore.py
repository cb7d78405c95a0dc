"""`.dockerignore` rules and the context tar: what docker would send, byte-stable."""

import io
import os
import tarfile

import pytest

from shared.buildcontext import (PatternMatcher, context_excludes, pack_context, read_dockerignore,
                                 unpack_context, walk_context)
from shared.errors import InvalidArgument


@pytest.mark.parametrize("text,expected", [
    ("# comment\n\n  *.log  \n", ["*.log"]),
    ("/abs/path\n", ["abs/path"]),
    ("a/../b\n./c/\n", ["b", "c"]),
    ("! keep.txt\n", ["!keep.txt"]),
    ("\ufeffx\n", ["x"]),
    (" # not a comment\n", ["# not a comment"]),
])
def test_read_dockerignore(text, expected):
    assert read_dockerignore(text) == expected


@pytest.mark.parametrize("patterns,path,excluded", [
    (["*.log"], "a.log", True),
    (["*.log"], "dir/a.log", False),              # * does not cross /
    (["**/*.log"], "dir/sub/a.log", True),
    (["**/*.log"], "a.log", True),                 # ** matches zero dirs
    (["dir"], "dir/sub/file", True),               # a dir pattern excludes its contents
    (["dir/**"], "dir/x", True),
    (["**"], "anything/at/all", True),
    (["a?c"], "abc", True),
    (["a?c"], "a/c", False),
    (["[a-c]x"], "bx", True),
    (["[a-c]x"], "dx", False),
    (["*.md", "!README.md"], "README.md", False),  # exception re-includes
    (["*.md", "!README.md", "README*"], "README.md", True),  # last match wins
    (["docs", "!docs/keep"], "docs/keep", False),
    (["docs", "!docs/keep"], "docs/other", True),
    (["foo**"], "foobar/x", True),
    (["**foo"], "xfoo", True),                    # moby's suffix match
    (["a.b"], "axb", False),                      # regexp specials are literal
    (["a\\*b"], "a*b", True),
])
def test_pattern_matcher(patterns, path, excluded):
    assert PatternMatcher(patterns).matches(path) is excluded


def test_bad_patterns():
    with pytest.raises(InvalidArgument):
        PatternMatcher(["!"])
    with pytest.raises(InvalidArgument):
        PatternMatcher(["[a-"])


def test_dockerfile_and_dockerignore_always_sent():
    ex = context_excludes("*\n", "Dockerfile")
    pm = PatternMatcher(ex)
    assert not pm.matches("Dockerfile") and not pm.matches(".dockerignore")
    assert pm.matches("src/app.py")


def _tree(root, files):
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


def test_walk_respects_patterns_and_exceptions(tmp_path):
    _tree(tmp_path, {"Dockerfile": b"FROM x", "a.txt": b"a", "node_modules/m/i.js": b"x",
                     "docs/keep.md": b"k", "docs/drop.md": b"d", "secret.env": b"s"})
    ex = context_excludes("node_modules\ndocs\n!docs/keep.md\n*.env\nDockerfile\n", "Dockerfile")
    sent = [rel for rel, _ in walk_context(str(tmp_path), ex)]
    assert sent == ["Dockerfile", "a.txt", "docs/keep.md"]


def test_pack_is_deterministic_and_unpack_hashes(tmp_path):
    src = tmp_path / "ctx"
    _tree(src, {"b/c.txt": b"hello", "a.txt": b"x" * 3000})
    os.symlink("a.txt", src / "link")
    out1, out2 = io.BytesIO(), io.BytesIO()
    d1 = pack_context(str(src), out1, [])
    os.utime(src / "a.txt", (1, 1))  # mtimes do not change the stream
    d2 = pack_context(str(src), out2, [])
    assert d1 == d2 and out1.getvalue() == out2.getvalue()
    out1.seek(0)
    idx = unpack_context(out1, str(tmp_path / "dst"))
    assert (tmp_path / "dst/b/c.txt").read_bytes() == b"hello"
    assert idx.files["b/c.txt"] == "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert idx.links == {"link": "a.txt"}


@pytest.mark.parametrize("entries", [
    [("../evil", "file", "")],
    [("link", "sym", "/etc"), ("link/passwd", "file", "")],
    [("dev", "chr", "")],
])
def test_unpack_refuses_unsafe_entries(tmp_path, entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, target in entries:
            ti = tarfile.TarInfo(name)
            if kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, target
                tf.addfile(ti)
            elif kind == "chr":
                ti.type = tarfile.CHRTYPE
                tf.addfile(ti)
            else:
                ti.size = 1
                tf.addfile(ti, io.BytesIO(b"x"))
    buf.seek(0)
    with pytest.raises(InvalidArgument):
        unpack_context(buf, str(tmp_path / "dst"))
    assert not (tmp_path / "evil").exists()


def test_big_files_travel_by_digest(tmp_path):
    import hashlib
    import io

    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(b"b" * 50000)
    (src / "small").write_bytes(b"s")
    os.chmod(src / "big", 0o640)
    external: dict[str, str] = {}
    out = io.BytesIO()
    digest, _ = pack_context(str(src), out, [], external=external, external_min=4096)
    big = "sha256:" + hashlib.sha256(b"b" * 50000).hexdigest()
    assert external == {big: str(src / "big")}
    assert len(out.getvalue()) < 50000  # not inlined
    out.seek(0)
    idx = unpack_context(out, str(tmp_path / "dst"))
    assert idx.external == {"big": (big, 50000, 0o640)} and idx.files["big"] == big
    assert (tmp_path / "dst" / "small").read_bytes() == b"s" and not (tmp_path / "dst" / "big").exists()
    (src / "big").write_bytes(b"c" * 50000)  # same size, new content: a new context digest
    assert pack_context(str(src), io.BytesIO(), [], external={}, external_min=4096)[0] != digest
