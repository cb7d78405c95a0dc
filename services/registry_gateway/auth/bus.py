"""Bus verbs that manage users, grants and visibility, and hand tokens to service accounts."""

from __future__ import annotations

from pathlib import Path

from shared import subjects
from shared.bus import BusService
from shared.messages.auth import (EnsureAdminReply, EnsureAdminRequest, GrantReply, GrantRequest, TokenReply, TokenRequest, UserAddRequest,
                                  UserReply, UserRmRequest, VisibilityReply, VisibilityRequest)
from shared.errors import InvalidArgument
from shared.messages.common import Ok

from .admin import ensure_admin_in
from .core import Auth
from .scopes import GRANT_ACTIONS, parse_scopes

_SMALL = 4 << 10  # bytes


def register(service: BusService, auth: Auth) -> None:
    store = auth.store

    async def user_add(req: UserAddRequest) -> UserReply:
        rec = await store.add_user(req.username, req.password, update=req.update, role=req.role)
        return UserReply(username=rec.username, created_at=rec.created_at, role=rec.role)

    async def user_rm(req: UserRmRequest) -> Ok:
        await store.remove_user(req.username)
        return Ok()

    async def grant(req: GrantRequest) -> GrantReply:
        rec = await store.grant(req.username, req.repository, req.access)
        actions = sorted(GRANT_ACTIONS[rec.access]) if rec else []
        return GrantReply(username=req.username, repository=req.repository, actions=actions)

    async def visibility(req: VisibilityRequest) -> VisibilityReply:
        rec = await store.set_visibility(req.repository, req.public)
        return VisibilityReply(repository=rec.pattern, public=rec.public)

    async def token(req: TokenRequest) -> TokenReply:
        ttl = req.expires_in if req.expires_in > 0 else None  # the issuer caps it
        issued = auth.issue_service_token(req.account, parse_scopes(req.scopes), ttl)
        return TokenReply(token=issued.token, expires_in=issued.expires_in, issued_at=issued.issued_at)

    async def ensure_admin(req: EnsureAdminRequest) -> EnsureAdminReply:
        if not req.password_file:
            raise InvalidArgument("password_file is required")
        return EnsureAdminReply(created=await ensure_admin_in(store, Path(req.password_file)) is not None)

    # Names, a password, a few scopes: nothing legitimate comes near these bounds.
    service.endpoint(subjects.REGISTRY_ENSURE_ADMIN, EnsureAdminRequest, ensure_admin, max_bytes=_SMALL)
    service.endpoint(subjects.REGISTRY_USER_ADD, UserAddRequest, user_add, max_bytes=_SMALL)
    service.endpoint(subjects.REGISTRY_USER_RM, UserRmRequest, user_rm, max_bytes=_SMALL)
    service.endpoint(subjects.REGISTRY_GRANT, GrantRequest, grant, max_bytes=_SMALL)
    service.endpoint(subjects.REGISTRY_REPO_VISIBILITY, VisibilityRequest, visibility, max_bytes=_SMALL)
    service.endpoint(subjects.REGISTRY_TOKEN, TokenRequest, token, max_bytes=4 * _SMALL)
