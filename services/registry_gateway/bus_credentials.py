"""The REGISTRY_USER_CREDS verb: a person's bus credentials, signed with the account's signing key.

Only the gateway reads that key (DATA_DIR/credentials/account-signing.nk); NATS lets only
admins publish the verb (shared/permissions.py). The credential carries the permissions of
the user's role as they are now: a later role change needs new credentials.
"""

from __future__ import annotations

import asyncio

from shared import credentials, permissions, subjects
from shared.bus import BusService
from shared.config import Config
from shared.errors import InvalidArgument, NotFound, Unavailable
from shared.messages.auth import UserCredsReply, UserCredsRequest

from .auth.store import AuthStore


def register(service: BusService, store: AuthStore, cfg: Config) -> None:
    cred_dir = cfg.data_path / credentials.CREDENTIALS_DIR

    async def user_creds(req: UserCredsRequest) -> UserCredsReply:
        rec = await store.get_user(req.username)
        if rec is None:
            raise NotFound(f"no user {req.username}")
        if not rec.role:
            raise InvalidArgument(f"{rec.username} has no role on the bus: "
                                  f"dockyard user add {rec.username} --update --role reader|operator|admin")
        try:
            authority = await asyncio.to_thread(credentials.Authority, cred_dir, signing_only=True)
        except OSError as e:
            raise Unavailable(f"this registry-gateway holds no bus signing key ({cred_dir})") from e
        creds = authority.issue(permissions.person(rec.username), permissions.role(rec.username, rec.role))
        return UserCredsReply(username=rec.username, role=rec.role, creds=creds)

    service.endpoint(subjects.REGISTRY_USER_CREDS, UserCredsRequest, user_creds)
