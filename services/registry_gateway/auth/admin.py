"""The first `admin` user, with a random password in a private file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from shared.errors import AlreadyExists

from .store import ADMIN, AuthStore

ADMIN_PASSWORD_FILE = "admin-password"


async def ensure_admin_in(store: AuthStore, path: Path) -> str | None:
    """Create `admin` with a new password written to `path` (0600) if absent; the password, or None."""
    if await store.get_user(ADMIN) is not None:
        return None
    password = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The file first: a user whose password nobody can read would lock the admin out.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, password.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        await store.add_user(ADMIN, password, role="admin")  # the administrator on the bus too
    except AlreadyExists:
        os.unlink(tmp)  # created concurrently: that one's file stands
        return None
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)
    return password
