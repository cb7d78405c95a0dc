"""The build-cache prune plan: age, LRU budget with shared layers, leases; and the local sweep."""

from __future__ import annotations

import os

from shared.oci.digest import Digest
from services.builder.executor.cache import CacheRecord, Entry
from services.builder.executor.prune import empty_trash, plan, trash_local
from services.builder.executor.store import LocalStore

NOW = 1_000_000.0


def _d(name: str) -> Digest:
    return Digest.from_bytes(name.encode())


def _e(key: str, age: float, layer: str | None, size: int = 0) -> Entry:
    rec = CacheRecord(empty=layer is None, digest=_d(layer) if layer else None,
                      diff_id=_d("diff-" + layer) if layer else None, size=size, last_used=NOW - age)
    return Entry(kv_key="v1." + key, key=key, rec=rec, rev=1)


def keys(p) -> list[str]:
    return [e.key for e in p.remove]


def test_age_removes_only_older_records():
    es = [_e("a", 100, "la", 10), _e("b", 5, "lb", 10), _e("c", 50, None)]
    p = plan(es, now=NOW, max_age=40, max_bytes=None, leased=set())
    assert keys(p) == ["a", "c"]
    assert p.freed == 10


def test_budget_drops_least_recently_used_first_until_under():
    es = [_e("new", 1, "l1", 100), _e("old", 30, "l2", 100), _e("mid", 20, "l3", 100)]
    p = plan(es, now=NOW, max_age=None, max_bytes=150, leased=set())
    assert keys(p) == ["old", "mid"]
    assert p.freed == 200
    assert plan(es, now=NOW, max_age=None, max_bytes=300, leased=set()).remove == []
    assert keys(plan(es, now=NOW, max_age=None, max_bytes=0, leased=set())) == ["old", "mid", "new"]


def test_a_layer_shared_by_two_records_counts_once_and_frees_only_with_both():
    es = [_e("x", 30, "shared", 100), _e("y", 1, "shared", 100), _e("z", 20, "own", 50)]
    p = plan(es, now=NOW, max_age=None, max_bytes=100, leased=set())
    # total 150: dropping x frees nothing (y still holds the layer), z brings it to 100.
    assert keys(p) == ["x", "z"]
    assert p.freed == 50 and set(p.freed_layers()) == {_d("own")}


def test_leased_records_stay_but_count_toward_the_budget():
    es = [_e("busy", 30, "l1", 100), _e("idle", 10, "l2", 100)]
    p = plan(es, now=NOW, max_age=5, max_bytes=None, leased={"busy"})
    assert keys(p) == ["idle"] and p.leased == 1
    p = plan(es, now=NOW, max_age=None, max_bytes=100, leased={"busy"})
    assert keys(p) == ["idle"] and p.leased == 1


def test_nothing_asked_nothing_removed():
    es = [_e("a", 1e9, "la", 10)]
    assert plan(es, now=NOW, max_age=None, max_bytes=None, leased=set()).remove == []


def test_trash_local_spares_layers_in_use(tmp_path):
    store = LocalStore(tmp_path)
    layers = {}
    for name in ("gone", "busy"):
        d, diff = _d(name), _d("diff-" + name)
        store.blob_path(d).write_bytes(b"x" * 5000)
        snap = store.snapshot_path(diff)
        snap.mkdir()
        (snap / "f").write_bytes(b"y" * 5000)
        layers[str(d)] = str(diff)
    trash = trash_local(store, layers, in_use={str(_d("diff-busy"))})
    assert not store.has_blob(_d("gone")) and not store.has_snapshot(_d("diff-gone"))
    assert store.has_blob(_d("busy")) and store.has_snapshot(_d("diff-busy"))
    assert empty_trash(trash) >= 10000
    assert not os.path.exists(trash)
