"""registry-gateway auth and cross-registry copy: requests and replies.

Subjects (in shared.subjects): REGISTRY_USER_ADD, REGISTRY_USER_RM, REGISTRY_GRANT,
REGISTRY_REPO_VISIBILITY, REGISTRY_TOKEN, REGISTRY_COPY. The bus is trusted (NATS
permissions decide who may send these), so none of them carries credentials of the
caller; REGISTRY_COPY carries the credentials for the *other* registry.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.messages.common import Inbox
from shared.oci.digest import Digest

Access = Literal["pull", "push", "none"]
BusRole = Literal["", "reader", "operator", "admin"]  # shared.permissions.ROLES; "" = none on the bus


class UserAddRequest(msgspec.Struct, kw_only=True):
    username: str
    password: str
    # Change the password of an existing user instead of failing with AlreadyExists.
    update: bool = False
    # The user's role on the bus (None: unchanged; a new user has none). With `update`
    # and an empty password only the role changes.
    role: BusRole | None = None


class UserRmRequest(msgspec.Struct, kw_only=True):
    username: str


class EnsureAdminRequest(msgspec.Struct, kw_only=True):
    """Create user `admin` if absent, its random password written to `password_file` (0600)."""

    password_file: str


class EnsureAdminReply(msgspec.Struct, kw_only=True):
    created: bool


class UserReply(msgspec.Struct, kw_only=True):
    username: str
    created_at: float = 0.0
    role: BusRole = ""


class UserCredsRequest(msgspec.Struct, kw_only=True):
    """Bus credentials for a user with a role (REGISTRY_USER_CREDS, admins only)."""

    username: str


class UserCredsReply(msgspec.Struct, kw_only=True):
    username: str
    role: BusRole
    creds: str  # a NATS .creds file


class GrantRequest(msgspec.Struct, kw_only=True):
    """Give `username` pull or push (push implies pull) on a repository or a `prefix/*` pattern.

    `none` revokes the grant on exactly that repository or pattern.
    """

    username: str
    repository: str
    access: Access


class GrantReply(msgspec.Struct, kw_only=True):
    username: str
    repository: str
    actions: list[str] = []


class VisibilityRequest(msgspec.Struct, kw_only=True):
    """Make a repository (or a `prefix/*` pattern) public (anonymous pull) or private."""

    repository: str
    public: bool


class VisibilityReply(msgspec.Struct, kw_only=True):
    repository: str
    public: bool


class TokenRequest(msgspec.Struct, kw_only=True):
    """A registry token for a trusted service account (builder, agents) on the bus.

    `scopes` use the Docker form `repository:NAME:pull,push`.
    """

    account: str
    scopes: list[str] = []
    expires_in: int = 0  # 0: the gateway's default lifetime


class TokenReply(msgspec.Struct, kw_only=True):
    token: str
    expires_in: int
    issued_at: str


class RegistryCredentials(msgspec.Struct, kw_only=True):
    username: str = ""
    password: str = ""
    # A bearer identity token (docker's `identitytoken`), used instead of a password.
    identity_token: str = ""


class CopyRequest(msgspec.Struct, kw_only=True):
    """Copy an image (or a whole index) between two references.

    A reference without a registry, or whose registry is the stack's `registry_addr`,
    is in the stack registry; the gateway reaches that one with its own service token.
    Credentials apply to the other registry, from the CLI user's config.json.
    """

    source: str
    destination: str
    source_credentials: RegistryCredentials | None = None
    destination_credentials: RegistryCredentials | None = None
    # None: plain http for loopback registries only; True: always http.
    insecure: bool | None = None
    progress_inbox: Inbox = ""


class CopyReply(msgspec.Struct, kw_only=True):
    digest: Digest
    media_type: str
    blobs_copied: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
