"""The mark phase as pure functions over a small in-memory graph of the registry.

Manifests are per repository (a manifest link), blobs are global: a layer shared by two
repositories stays while either references it. From a set of root manifests, marking
reaches
- every child an index lists (each child manifest, recursively),
- an image manifest's config and layers,
- the referrers of a reached manifest (artifacts whose subject it is are kept with it),
- the subject of a reached manifest (a kept artifact keeps what it describes).
Children that name no manifest of the repository (dangling, or plain blobs) are marked as
digests and not followed; subject links may form cycles (a visited set ends them).
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Key = tuple[str, str]  # (repository, digest)


@dataclass(frozen=True, slots=True)
class ManifestNode:
    repo: str
    digest: str
    pushed_at: float = 0.0
    children: tuple[str, ...] = ()  # index: child manifests; image: config + layers
    subject: str | None = None
    is_index: bool = False


@dataclass(slots=True)
class Graph:
    manifests: dict[Key, ManifestNode] = field(default_factory=dict)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo, tag) -> digest
    _referrers: dict[Key, list[str]] | None = None

    def add(self, node: ManifestNode) -> None:
        self.manifests[(node.repo, node.digest)] = node
        self._referrers = None

    def tag(self, repo: str, tag: str, digest: str) -> None:
        self.tags[(repo, tag)] = digest

    def referrers(self) -> dict[Key, list[str]]:
        """(repo, subject digest) -> digests of the manifests that name it as subject."""
        if self._referrers is None:
            refs: dict[Key, list[str]] = defaultdict(list)
            for (repo, dgst), node in self.manifests.items():
                if node.subject:
                    refs[(repo, node.subject)].append(dgst)
            self._referrers = dict(refs)
        return self._referrers

    def tags_by_manifest(self) -> dict[Key, list[str]]:
        out: dict[Key, list[str]] = defaultdict(list)
        for (repo, tag), dgst in self.tags.items():
            out[(repo, dgst)].append(tag)
        return out


@dataclass(slots=True)
class MarkResult:
    manifests: set[Key]  # manifest links kept
    blobs: set[str]  # every digest the kept manifests need (manifest bodies included)


def mark(graph: Graph, roots: Iterable[Key]) -> MarkResult:
    """Everything reachable from `roots` (roots naming no manifest are marked as digests)."""
    referrers = graph.referrers()
    kept: set[Key] = set()
    blobs: set[str] = set()
    stack = list(roots)
    while stack:
        key = stack.pop()
        repo, dgst = key
        blobs.add(dgst)
        if key in kept:
            continue
        node = graph.manifests.get(key)
        if node is None:
            continue  # dangling: a child the repository never received
        kept.add(key)
        for child in node.children:
            if (repo, child) in graph.manifests:
                stack.append((repo, child))
            else:
                blobs.add(child)
        if node.subject:
            stack.append((repo, node.subject))
        for ref in referrers.get(key, ()):
            stack.append((repo, ref))
    return MarkResult(kept, blobs)


def all_roots(graph: Graph) -> list[Key]:
    """The registry sweep keeps every manifest still stored (tagged or not)."""
    return list(graph.manifests)


@dataclass(frozen=True, slots=True)
class Retention:
    """What keeps a manifest in one repository (None/empty: the rule is off)."""

    keep_last: int | None = None
    keep_within: float | None = None  # seconds
    keep_tags: tuple[str, ...] = ()

    @property
    def is_policy(self) -> bool:
        return self.keep_last is not None or self.keep_within is not None or bool(self.keep_tags)


@dataclass(slots=True)
class RetentionPlan:
    manifests: list[Key]  # manifest links to remove
    tags: list[tuple[str, str]]  # (repo, tag) to remove (only under a policy)
    kept: MarkResult


def images(graph: Graph, repo: str) -> list[ManifestNode]:
    """A repository's top-level images: not a child of one of its indexes, not an artifact
    attached to a subject, or tagged."""
    children: set[str] = set()
    nodes = [n for (r, _), n in graph.manifests.items() if r == repo]
    for n in nodes:
        if n.is_index:
            children.update(n.children)
    tagged = {d for (r, _), d in graph.tags.items() if r == repo}
    return [n for n in nodes
            if n.digest in tagged or (n.digest not in children and not n.subject)]


def plan_retention(graph: Graph, now: float, untagged_retention: float,
                   policies: Mapping[str, Retention]) -> RetentionPlan:
    """The manifests (and, under a policy, tags) that retention lets go.

    Without a policy a repository keeps every tagged manifest. With one, an image is kept
    when any rule keeps it (last N pushed, pushed within D, a tag matching a glob) and the
    tags of the others go too. In both cases anything pushed within `untagged_retention`
    stays: the children of a multi-arch image arrive untagged before their index.
    """
    tags_of = graph.tags_by_manifest()
    roots: list[Key] = []
    for key, node in graph.manifests.items():
        if now - node.pushed_at < untagged_retention:
            roots.append(key)
    repos = {r for r, _ in graph.manifests}
    for repo in repos:
        pol = policies.get(repo)
        if pol is None or not pol.is_policy:
            roots.extend(k for k in tags_of if k[0] == repo and k in graph.manifests)
            continue
        imgs = sorted(images(graph, repo), key=lambda n: (n.pushed_at, n.digest), reverse=True)
        for i, n in enumerate(imgs):
            key = (repo, n.digest)
            if pol.keep_last is not None and i < pol.keep_last:
                roots.append(key)
            elif pol.keep_within is not None and now - n.pushed_at < pol.keep_within:
                roots.append(key)
            elif any(fnmatch.fnmatchcase(t, g) for t in tags_of.get(key, ()) for g in pol.keep_tags):
                roots.append(key)
    kept = mark(graph, roots)
    dead_manifests = sorted(k for k in graph.manifests if k not in kept.manifests)
    dead_tags = sorted(t for t, d in graph.tags.items()
                       if (t[0], d) in graph.manifests and (t[0], d) not in kept.manifests)
    return RetentionPlan(dead_manifests, dead_tags, kept)
