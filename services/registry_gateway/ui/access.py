"""Who a UI request is and what they may see: the registry's own Auth decides.

A logged-in session is a Principal as a Basic login would make it (grants from the ACL,
`admin` the admin); an anonymous one sees public repositories only. Single repositories are
judged by `Auth.allowed_actions`, the API's own check. The repositories page judges a whole
list at once from the same records (one read of the visibility settings and of the user's
grants, matched with the same patterns), not one bus round trip per repository.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from shared.errors import NotFound
from services.registry_gateway.auth.core import ANONYMOUS, Auth, Principal
from services.registry_gateway.auth.scopes import GRANT_ACTIONS, PULL, candidate_patterns
from services.registry_gateway.auth.store import ADMIN


def principal_of(auth: Auth, username: str) -> Principal:
    if not auth.enabled:
        return Principal(ANONYMOUS, "disabled", admin=True)
    if not username:
        return Principal(ANONYMOUS, "anonymous")
    return Principal(username, "session", admin=username == ADMIN)


async def require_pull(auth: Auth, principal: Principal, repo: str) -> frozenset[str]:
    """The actions `principal` has on `repo`; NotFound (not 403: a private name stays unknown)
    without pull."""
    actions = await auth.allowed_actions(principal, "repository", repo)
    if "*" not in actions and PULL not in actions:
        raise NotFound(f"repository {repo} not found", detail_code="NAME_UNKNOWN")
    return actions


def _match(patterns: dict[str, object], repo: str):
    """The value of the most specific pattern covering `repo`, as AuthStore resolves them."""
    for p in candidate_patterns(repo):
        if p in patterns:
            return patterns[p]
    return None


async def visible(auth: Auth, principal: Principal, names: Iterable[str]) -> list[tuple[str, bool]]:
    """(name, public) of each repository `principal` may pull."""
    kv = auth.store.visibility
    got = await asyncio.gather(*(kv.get(k) for k in await kv.keys("visibility.")))
    vis = {g[0].pattern: g[0].public for g in got if g is not None}
    names = list(names)
    if principal.admin:
        return [(n, bool(_match(vis, n))) for n in names]
    grants: dict[str, set[str]] = {}
    if principal.name:
        for g in await auth.store.grants_of(principal.name):
            grants.setdefault(g.pattern, set()).update(GRANT_ACTIONS.get(g.access, ()))
    out = []
    for n in names:
        public = bool(_match(vis, n))
        # every matching grant counts (granted_actions unions them)
        granted = any(PULL in grants.get(p, ()) for p in candidate_patterns(n))
        if public or granted:
            out.append((n, public))
    return out
