"""Cache mount dirs: sharing modes, seeding, and pruning by age and budget."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from services.builder.executor.mounts import CacheDirs
from services.builder.frontend.steps import Mount


def _m(**kw) -> Mount:
    return Mount(type="cache", target="/c", id=kw.pop("id", "c"), **kw)


def _none() -> Path | None:
    return None


async def test_shared_private_and_locked(tmp_path: Path):
    dirs = CacheDirs(tmp_path / "cm")
    async with dirs.use(_m(), "", _none) as a, dirs.use(_m(), "", _none) as b:
        assert a == b  # shared: one dir for both
    async with dirs.use(_m(sharing="private"), "", _none) as a:
        async with dirs.use(_m(sharing="private"), "", _none) as b:
            assert a != b  # the first is busy: a dir of its own
        async with dirs.use(_m(sharing="private"), "", _none) as c:
            assert c == b  # ... and reused once free

    order: list[str] = []

    async def locked(name: str) -> None:
        async with dirs.use(_m(id="l", sharing="locked"), "", _none):
            order.append(f"{name}+")
            await asyncio.sleep(0.01)
            order.append(f"{name}-")

    await asyncio.gather(locked("a"), locked("b"))
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])


async def test_mode_owner_and_seed(tmp_path: Path):
    dirs = CacheDirs(tmp_path / "cm")
    async with dirs.use(_m(id="o", mode=0o710, uid=12, gid=34), "", _none) as d:
        st = os.stat(d)
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o710, 12, 34)
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "f").write_text("seeded")
    async with dirs.use(_m(id="s", source="/x"), "stage:k", lambda: seed) as d:
        assert (d / "f").read_text() == "seeded"
        (d / "f").write_text("changed")
    async with dirs.use(_m(id="s", source="/x"), "stage:k", lambda: seed) as d:
        assert (d / "f").read_text() == "changed"  # seeded once only
    async with dirs.use(_m(id="s", source="/x"), "stage:other", _none) as d:
        assert not (d / "f").exists()  # another `from`: another cache


async def test_prune_by_age_and_budget_spares_busy_dirs(tmp_path: Path):
    dirs = CacheDirs(tmp_path / "cm")
    for name, size in (("a", 100), ("b", 200), ("c", 300)):
        async with dirs.use(_m(id=name), "", _none) as d:
            (d / "blob").write_bytes(b"x" * size)
    now = time.time()
    for i, c in enumerate(sorted(dirs.list(), key=lambda c: c.size)):  # a oldest, c newest
        os.utime(c.path, (now - 100 + i * 10, now - 100 + i * 10))
    assert dirs.plan(now=now, max_age=None, max_bytes=None) == []
    assert [c.size for c in dirs.plan(now=now, max_age=85, max_bytes=None)] == [100, 200]
    assert [c.size for c in dirs.plan(now=now, max_age=None, max_bytes=300)] == [100, 200]
    async with dirs.use(_m(id="a"), "", _none):
        doomed = dirs.plan(now=now, max_age=None, max_bytes=0)
        assert sorted(c.size for c in doomed) == [200, 300]
        assert len(dirs.remove(doomed)) == 2
    dirs.purge()
    assert [c.size for c in dirs.list()] == [100]
    assert sorted(p.name for p in (tmp_path / "cm").iterdir()) == [dirs.list()[0].name]
