"""The mark algorithm and retention planning on small graphs."""

from __future__ import annotations

from services.garbage_collector.mark import (Graph, ManifestNode, Retention, all_roots, mark,
                                             plan_retention)


def d(name: str) -> str:
    """A readable stand-in digest (mark never parses digests)."""
    return f"sha256:{name}"


def image(repo, name, layers, *, pushed_at=0.0, subject=None):
    return ManifestNode(repo=repo, digest=d(name), pushed_at=pushed_at,
                        children=tuple(d(x) for x in [f"cfg-{name}", *layers]),
                        subject=d(subject) if subject else None)


def index(repo, name, children, *, pushed_at=0.0):
    return ManifestNode(repo=repo, digest=d(name), pushed_at=pushed_at,
                        children=tuple(d(c) for c in children), is_index=True)


def test_shared_layers_across_repositories_stay_while_either_keeps_them():
    g = Graph()
    g.add(image("a", "m1", ["base", "a-only"]))
    g.add(image("b", "m2", ["base", "b-only"]))
    g.tag("a", "latest", d("m1"))
    # only repository a's manifest is a root: base stays (through a), b-only does not
    res = mark(g, [("a", d("m1"))])
    assert d("base") in res.blobs and d("a-only") in res.blobs
    assert d("b-only") not in res.blobs and d("m2") not in res.blobs
    assert res.manifests == {("a", d("m1"))}
    res = mark(g, all_roots(g))
    assert {d("base"), d("a-only"), d("b-only"), d("m1"), d("m2"), d("cfg-m1"), d("cfg-m2")} <= res.blobs


def test_index_reaches_every_child_and_their_blobs():
    g = Graph()
    g.add(image("r", "amd64", ["l1"]))
    g.add(image("r", "arm64", ["l2"]))
    g.add(index("r", "idx", ["amd64", "arm64"]))
    g.add(image("r", "other", ["l3"]))
    res = mark(g, [("r", d("idx"))])
    assert res.manifests == {("r", d("idx")), ("r", d("amd64")), ("r", d("arm64"))}
    assert {d("l1"), d("l2"), d("cfg-amd64"), d("cfg-arm64"), d("idx")} <= res.blobs
    assert d("l3") not in res.blobs


def test_child_manifest_of_other_repository_is_not_followed():
    g = Graph()
    g.add(image("other", "amd64", ["l1"]))
    g.add(index("r", "idx", ["amd64"]))
    res = mark(g, [("r", d("idx"))])
    assert res.manifests == {("r", d("idx"))}
    assert d("amd64") in res.blobs and d("l1") not in res.blobs


def test_referrers_are_kept_with_their_subject_and_keep_it():
    g = Graph()
    g.add(image("r", "img", ["l1"]))
    g.add(image("r", "sig", ["sigblob"], subject="img"))
    g.add(image("r", "sbom-of-sig", ["sbom"], subject="sig"))
    g.add(image("r", "unrelated", ["l9"]))
    res = mark(g, [("r", d("img"))])
    assert res.manifests == {("r", d("img")), ("r", d("sig")), ("r", d("sbom-of-sig"))}
    assert {d("sigblob"), d("sbom")} <= res.blobs and d("l9") not in res.blobs
    # a kept artifact keeps its subject too
    res = mark(g, [("r", d("sbom-of-sig"))])
    assert ("r", d("img")) in res.manifests and d("l1") in res.blobs


def test_dangling_children_and_subjects_are_tolerated():
    g = Graph()
    g.add(index("r", "idx", ["missing-child", "amd64"]))
    g.add(image("r", "amd64", ["l1"]))
    g.add(image("r", "art", ["a1"], subject="missing-subject"))
    res = mark(g, [("r", d("idx")), ("r", d("art")), ("r", d("no-such-root"))])
    assert res.manifests == {("r", d("idx")), ("r", d("amd64")), ("r", d("art"))}
    assert {d("missing-child"), d("missing-subject"), d("l1"), d("a1")} <= res.blobs


def test_cycles_of_subject_links_end():
    g = Graph()
    g.add(image("r", "a", ["la"], subject="b"))
    g.add(image("r", "b", ["lb"], subject="c"))
    g.add(image("r", "c", ["lc"], subject="a"))
    g.add(image("r", "self", ["ls"], subject="self"))
    res = mark(g, [("r", d("b"))])
    assert res.manifests == {("r", d("a")), ("r", d("b")), ("r", d("c"))}
    res = mark(g, [("r", d("self"))])
    assert res.manifests == {("r", d("self"))}
    # unrooted, a cycle is garbage like anything else
    plan = plan_retention(g, now=1000, untagged_retention=10, policies={})
    assert len(plan.manifests) == 4


def test_untagged_retention_keeps_children_of_tagged_indexes():
    g = Graph()
    g.add(image("r", "amd64", ["l1"], pushed_at=0))
    g.add(image("r", "arm64", ["l2"], pushed_at=0))
    g.add(index("r", "idx", ["amd64", "arm64"], pushed_at=0))
    g.tag("r", "v1", d("idx"))
    g.add(image("r", "old-untagged", ["l3"], pushed_at=0))
    g.add(image("r", "new-untagged", ["l4"], pushed_at=995))
    g.add(image("r", "sig-of-arm", ["s"], pushed_at=0, subject="arm64"))
    g.add(image("r", "sig-of-old", ["s2"], pushed_at=0, subject="old-untagged"))
    plan = plan_retention(g, now=1000, untagged_retention=60, policies={})
    assert plan.manifests == sorted([("r", d("old-untagged")), ("r", d("sig-of-old"))])
    assert plan.tags == []
    assert d("l1") in plan.kept.blobs and d("s") in plan.kept.blobs and d("l3") not in plan.kept.blobs


def test_policy_keep_last_within_and_tag_globs():
    g = Graph()
    for i in range(6):
        g.add(image("r", f"m{i}", [f"l{i}"], pushed_at=100 * i))
        g.tag("r", f"build-{i}", d(f"m{i}"))
    g.tag("r", "v1.0", d("m0"))
    g.add(image("r", "idxchild", ["lc"], pushed_at=0))
    g.add(index("r", "idx", ["idxchild"], pushed_at=50))
    g.tag("r", "v2-multi", d("idx"))
    g.add(image("q", "qm", ["lq"], pushed_at=0))
    g.tag("q", "old", d("qm"))
    pol = {"r": Retention(keep_last=2, keep_within=250, keep_tags=("v*",))}
    plan = plan_retention(g, now=600, untagged_retention=0, policies=pol)
    # kept: m5, m4 (last 2); m4, m3 (within 250 s: pushed 400, 500... and 300 is 300 s old)
    # m0 (tag v1.0), idx + idxchild (tag v2-multi); repository q has no policy
    assert plan.manifests == sorted([("r", d("m1")), ("r", d("m2")), ("r", d("m3"))])
    assert plan.tags == sorted([("r", "build-1"), ("r", "build-2"), ("r", "build-3")])
    assert ("r", d("idxchild")) in plan.kept.manifests and ("q", d("qm")) in plan.kept.manifests


def test_policy_does_not_count_index_children_or_artifacts_as_images():
    g = Graph()
    g.add(image("r", "c1", ["l1"], pushed_at=90))
    g.add(image("r", "c2", ["l2"], pushed_at=91))
    g.add(index("r", "idx", ["c1", "c2"], pushed_at=10))
    g.add(image("r", "sig", ["s"], pushed_at=95, subject="idx"))
    g.add(image("r", "lone", ["l3"], pushed_at=5))
    plan = plan_retention(g, now=1000, untagged_retention=0, policies={"r": Retention(keep_last=1)})
    # the newest image is the index (its children and its signature are not images)
    assert plan.manifests == [("r", d("lone"))]


def test_untagged_index_goes_with_its_own_children_but_not_shared_or_nested_ones():
    g = Graph()
    for arch in ("amd64", "arm64", "s390x"):
        g.add(image("r", arch, [f"l-{arch}"], pushed_at=0))
    # v1 moved from `old` to `new`: both list arm64; `new` reaches s390x through a nested index.
    g.add(index("r", "old", ["amd64", "arm64"], pushed_at=0))
    g.add(index("r", "nested", ["s390x"], pushed_at=0))
    g.add(index("r", "new", ["arm64", "nested"], pushed_at=0))
    g.tag("r", "v1", d("new"))
    plan = plan_retention(g, now=1000, untagged_retention=60, policies={})
    assert plan.manifests == sorted([("r", d("old")), ("r", d("amd64"))])
    assert {d("l-arm64"), d("l-s390x"), d("nested")} <= plan.kept.blobs
    assert d("l-amd64") not in plan.kept.blobs
    # Within the retention window nothing goes, tagged or not (children may precede their index).
    assert plan_retention(g, now=30, untagged_retention=60, policies={}).manifests == []
