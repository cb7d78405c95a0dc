"""The CLI's context cache: big-file digests and the last packed context, trusted by stat only."""

from __future__ import annotations

import io
import os

import pytest

from shared.buildcontext import pack as buildcontext  # the module whose hashing the tests count
from shared.buildcontext import DigestCache, context_signature, pack_context

OLD_NS = 1_600_000_000 * 10**9


@pytest.fixture
def no_racy_window(monkeypatch):
    """Files made by a test are seconds old at most: let the cache trust them anyway."""
    monkeypatch.setattr(buildcontext, "_RACY_NS", -10**18)


@pytest.fixture
def hashes(monkeypatch):
    """Counts the files actually read for a digest."""
    seen: list[str] = []
    real = buildcontext._file_digest

    def counting(path: str) -> str:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(buildcontext, "_file_digest", counting)
    return seen


def _pack(root, cache):
    external: dict[str, str] = {}
    digest, _ = pack_context(str(root), io.BytesIO(), [], external=external, external_min=64, digests=cache)
    return digest, external


def test_unchanged_file_is_not_rehashed_and_survives_a_reload(tmp_path, no_racy_window, hashes):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "big").write_bytes(b"a" * 100)
    db = str(tmp_path / "cache" / "c.json")
    cache = DigestCache(db)
    first = _pack(ctx, cache)
    cache.save()
    assert len(hashes) == 1
    again = DigestCache(db)
    assert _pack(ctx, again) == first
    assert len(hashes) == 1  # from the saved cache, not the file
    assert first == _pack(ctx, None)  # and what a pack without a cache makes


def test_content_change_with_new_mtime_is_seen(tmp_path, no_racy_window, hashes):
    big = tmp_path / "big"
    big.write_bytes(b"a" * 100)
    os.utime(big, ns=(OLD_NS, OLD_NS))
    cache = DigestCache(None)
    d1, ext1 = _pack(tmp_path, cache)
    big.write_bytes(b"b" * 200)
    os.utime(big, ns=(OLD_NS + 10**9, OLD_NS + 10**9))
    d2, ext2 = _pack(tmp_path, cache)
    assert d1 != d2 and set(ext1) != set(ext2)
    assert (d2, ext2) == _pack(tmp_path, None)


def test_same_size_edit_with_mtime_restored_is_seen(tmp_path, no_racy_window):
    big = tmp_path / "big"
    big.write_bytes(b"a" * 100)
    os.utime(big, ns=(OLD_NS, OLD_NS))
    cache = DigestCache(None)
    d1, ext1 = _pack(tmp_path, cache)
    sig1, _ = context_signature(str(tmp_path), [], external_min=64)
    with open(big, "r+b") as f:  # same size, same inode, mtime put back: only ctime tells
        f.write(b"b")
    os.utime(big, ns=(OLD_NS, OLD_NS))
    d2, ext2 = _pack(tmp_path, cache)
    assert d1 != d2 and list(ext2) == [buildcontext._file_digest(str(big))]
    assert context_signature(str(tmp_path), [], external_min=64)[0] != sig1


def test_a_fresh_file_is_not_remembered(tmp_path, hashes):
    (tmp_path / "big").write_bytes(b"a" * 100)  # written in this very tick: racy
    cache = DigestCache(None)
    _pack(tmp_path, cache)
    _pack(tmp_path, cache)
    assert len(hashes) == 2
    assert context_signature(str(tmp_path), [])[1] is True


def test_removed_files_are_forgotten(tmp_path, no_racy_window):
    (tmp_path / "a").write_bytes(b"a" * 100)
    (tmp_path / "b").write_bytes(b"b" * 100)
    cache = DigestCache(None)
    _pack(tmp_path, cache)
    (tmp_path / "b").unlink()
    _pack(tmp_path, cache)
    assert list(cache.files) == [str(tmp_path / "a")]


def test_signature_follows_excludes_and_small_edits(tmp_path):
    (tmp_path / "f").write_text("one")
    sig, _ = context_signature(str(tmp_path), [])
    assert context_signature(str(tmp_path), [])[0] == sig
    assert context_signature(str(tmp_path), ["f"])[0] != sig
    (tmp_path / "f").write_text("two")
    assert context_signature(str(tmp_path), [])[0] != sig


def test_packed_context_round_trips_and_a_corrupt_cache_is_empty(tmp_path):
    db = tmp_path / "c.json"
    cache = DigestCache(str(db))
    cache.remember("sig", "sha256:" + "0" * 64, 10, {"sha256:" + "1" * 64: "/x"})
    cache.save()
    assert DigestCache(str(db)).packed("sig") == ("sha256:" + "0" * 64, 10, {"sha256:" + "1" * 64: "/x"})
    assert DigestCache(str(db)).packed("other") is None
    db.write_text("{not json")
    broken = DigestCache(str(db))
    assert broken.files == {} and broken.packed("sig") is None


def _tar(entries: list[tuple[str, bytes, int]]) -> io.BytesIO:
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data, mode in entries:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), mode
            tf.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_unpack_links_what_the_donor_has_and_writes_the_rest(tmp_path):
    from shared.buildcontext import unpack_context
    first = unpack_context(_tar([("same", b"same", 0o644), ("edited", b"v1", 0o644), ("chmod", b"x", 0o644)]),
                           str(tmp_path / "one"))
    second = unpack_context(_tar([("same", b"same", 0o644), ("edited", b"v2", 0o644), ("chmod", b"x", 0o755),
                                  ("new", b"n", 0o600)]), str(tmp_path / "two"), donor=first)
    one, two = tmp_path / "one", tmp_path / "two"
    assert (two / "same").stat().st_ino == (one / "same").stat().st_ino  # linked
    assert (two / "edited").read_bytes() == b"v2" and (one / "edited").read_bytes() == b"v1"
    assert (two / "edited").stat().st_ino != (one / "edited").stat().st_ino
    assert (two / "chmod").stat().st_mode & 0o777 == 0o755 and (one / "chmod").stat().st_mode & 0o777 == 0o644
    assert second.files == unpack_context(_tar([("same", b"same", 0o644), ("edited", b"v2", 0o644),
                                                ("chmod", b"x", 0o755), ("new", b"n", 0o600)]),
                                          str(tmp_path / "three")).files


def test_unpack_writes_when_the_donor_is_gone(tmp_path):
    import shutil

    from shared.buildcontext import unpack_context
    first = unpack_context(_tar([("f", b"data", 0o644)]), str(tmp_path / "one"))
    shutil.rmtree(tmp_path / "one")  # evicted by another build meanwhile
    unpack_context(_tar([("f", b"data", 0o644)]), str(tmp_path / "two"), donor=first)
    assert (tmp_path / "two" / "f").read_bytes() == b"data"
