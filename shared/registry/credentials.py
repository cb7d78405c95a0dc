"""Registry credentials in docker's `config.json` (the file skopeo and podman read too).

`auths.<registry>.auth` holds base64 `user:password`. Lookups also read
`${XDG_RUNTIME_DIR}/containers/auth.json` (podman's and skopeo's own file) after the
docker file; writes go to the docker file only, atomically and mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidArgument

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password in a log or traceback
        return f"Credentials(username={self.username!r}, password=***)"


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def containers_auth_path() -> Path | None:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "containers" / "auth.json" if runtime else None


def _keys_for(registry: str) -> list[str]:
    """The `auths` keys that may name `registry` (bare, or with a scheme as docker once wrote)."""
    if registry in DOCKER_HUB_KEYS:
        return list(DOCKER_HUB_KEYS)
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/",
            f"https://{registry}/v2/"]


def _decode(entry: dict) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
        if sep:
            return Credentials(user, password)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"])
    return None


class CredentialStore:
    """Read and write the `auths` of one docker config file; look up in podman's file too."""

    def __init__(self, path: str | os.PathLike | None = None, *, extra_lookup: list[Path] | None = None):
        self.path = Path(path) if path else docker_config_path()
        if extra_lookup is None:
            extra = containers_auth_path()
            extra_lookup = [extra] if extra and path is None else []
        self.extra_lookup = extra_lookup

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"cannot read {path}: {e}") from e
        if not isinstance(data, dict):
            raise InvalidArgument(f"{path} is not a JSON object")
        return data

    def get(self, registry: str) -> Credentials | None:
        for path in [self.path, *self.extra_lookup]:
            auths = self._read(path).get("auths") or {}
            for key in _keys_for(registry):
                if isinstance(auths.get(key), dict) and (creds := _decode(auths[key])) is not None:
                    return creds
        return None

    def store(self, registry: str, creds: Credentials) -> None:
        data = self._read(self.path)
        auths = data.setdefault("auths", {})
        for key in _keys_for(registry)[1:]:
            auths.pop(key, None)  # one entry per registry, as docker login leaves it
        token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        auths[registry] = {"auth": token}
        self._write(data)

    def erase(self, registry: str) -> bool:
        data = self._read(self.path)
        auths = data.get("auths") or {}
        found = [k for k in _keys_for(registry) if k in auths]
        for k in found:
            del auths[k]
        if found:
            self._write(data)
        return bool(found)

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".config.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent="\t")
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
