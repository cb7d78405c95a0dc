"""Docker token scopes (`repository:NAME:pull,push`) and repository patterns (`team/*`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import InvalidArgument
from shared.oci.reference import parse_repository

PULL, PUSH, DELETE = "pull", "push", "delete"
ALL_ACTIONS = frozenset({PULL, PUSH, DELETE})
# What a grant gives: push implies pull, and deleting in a repository one may push to.
GRANT_ACTIONS = {"pull": frozenset({PULL}), "push": ALL_ACTIONS}
CATALOG = ("registry", "catalog")

_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


@dataclass(frozen=True)
class Scope:
    type: str  # "repository" or "registry"
    name: str
    actions: frozenset[str]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"


def parse_scopes(values: list[str]) -> list[Scope]:
    """Scopes from `scope` query parameters (each may hold several, space-separated)."""
    out: dict[tuple[str, str], set[str]] = {}
    for value in values:
        for item in value.split():
            # The name may contain ':' (a registry host with port); type is before the
            # first colon and actions after the last, as distribution parses it.
            typ, sep1, rest = item.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not (sep1 and sep2 and typ and name):
                raise InvalidArgument(f"invalid scope {item!r}")
            acts = {a for a in actions.split(",") if a}
            if "*" in acts:
                acts = set(ALL_ACTIONS) if typ == "repository" else {"*"}
            out.setdefault((typ, name), set()).update(acts)
    return [Scope(t, n, frozenset(a)) for (t, n), a in out.items()]


def challenge_actions(actions: frozenset[str]) -> str:
    """Actions to name in a 401 challenge, as distribution names them: a push with pull."""
    acts = set(actions)
    if PUSH in acts:
        acts.add(PULL)
    return ",".join(sorted(acts))


def parse_username(name: str) -> str:
    if not _USERNAME_RE.match(name or ""):
        raise InvalidArgument(f"invalid user name {name!r}: letters, digits and . _ @ - only")
    return name


def parse_pattern(pattern: str) -> str:
    """A repository name, a `prefix/*` pattern (everything below prefix), or `*` (everything)."""
    if pattern == "*":
        return pattern
    if pattern.endswith("/*"):
        parse_repository(pattern[:-2])
        return pattern
    return parse_repository(pattern)


def candidate_patterns(repository: str) -> list[str]:
    """Patterns that cover `repository`, most specific first: `a/b/c`, `a/b/*`, `a/*`, `*`."""
    parts = repository.split("/")
    return [repository] + [f"{'/'.join(parts[:i])}/*" for i in range(len(parts) - 1, 0, -1)] + ["*"]
