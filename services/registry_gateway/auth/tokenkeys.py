"""The registry token key pair on disk: ES256 (P-256), the private half only where gateways read it.

    DATA_DIR/credentials/registry-token.key           PKCS#8 PEM, 0600: signs (gateways only)
    DATA_DIR/credentials/registry-token.pub           the public key: verifies
    DATA_DIR/credentials/registry-token.previous.pub  the key before the last rotation, still
                                                      accepted until its tokens have expired

Every token names its key by `kid`, the RFC 7638 thumbprint of the public key, so a verifier
picks the key without trying each. Replicas on one host share the files; the first to start
creates the key (linked into place, so a racing replica never replaces it) and all of them
notice a rotation by the files' change on disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, TypeVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.credentials import CREDENTIALS_DIR, create_secret_once, credentials_dir, write_secret
from shared.errors import Unavailable
from shared.fsutil import write_atomic

KEY_FILE = "registry-token.key"
PUB_FILE = "registry-token.pub"
PREVIOUS_PUB_FILE = "registry-token.previous.pub"
# The longest a token may live (service tokens over the bus): a retired key is dropped after it.
MAX_TOKEN_TTL = 24 * 3600
_RECHECK_SECONDS = 1.0  # how often a change of the files on disk is looked for

T = TypeVar("T")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey


def kid_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """The RFC 7638 JWK thumbprint of a P-256 public key (base64url, no padding)."""
    nums = public_key.public_numbers()
    x, y = (_b64(v.to_bytes(32, "big")) for v in (nums.x, nums.y))
    jwk = json.dumps({"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(jwk.encode()).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read_private(path: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise Unavailable(f"cannot read the registry token key {path}: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise Unavailable(f"{path} is not a P-256 (ES256) private key")
    return SigningKey(kid_of(key.public_key()), key)


def read_public(path: Path) -> ec.EllipticCurvePublicKey:
    """The P-256 public key in `path`; FileNotFoundError if there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise Unavailable(f"cannot read the registry token public key {path}: {e}") from e
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise Unavailable(f"cannot read the registry token public key {path}: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise Unavailable(f"{path} is not a P-256 (ES256) public key")
    return key


def _publish(d: Path, key: SigningKey) -> None:
    """Write the `.pub` of `key` unless it is already there (replicas race to the same bytes)."""
    pem = _public_pem(key.private_key.public_key())
    pub = d / PUB_FILE
    try:
        if pub.read_bytes() == pem:
            return
    except FileNotFoundError:
        pass
    write_atomic(pub, pem)
    os.chmod(pub, 0o644)


def load_or_create(data_dir: str | os.PathLike) -> SigningKey:
    """The gateways' signing key, made on first start; its `.pub` written beside it."""
    d = credentials_dir(data_dir)
    path = d / KEY_FILE
    if not path.exists():  # a replica racing us to it may win: then its key is the one
        create_secret_once(path, _private_pem(ec.generate_private_key(ec.SECP256R1())))
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)  # a copy from another host may have come without its mode
    key = _read_private(path)
    _publish(d, key)
    return key


def rotate(data_dir: str | os.PathLike) -> str:
    """Replace the signing key; the old public key stays accepted for MAX_TOKEN_TTL. The new kid."""
    d = credentials_dir(data_dir)
    old = load_or_create(d.parent)
    # Verifiers accept the old key before anyone can sign with the new one, and the new one
    # before its tokens reach them (a verifier re-reads the files on an unknown kid).
    write_atomic(d / PREVIOUS_PUB_FILE, _public_pem(old.private_key.public_key()))
    write_secret(d / KEY_FILE, _private_pem(ec.generate_private_key(ec.SECP256R1())))
    new = _read_private(d / KEY_FILE)
    _publish(d, new)
    return new.kid


class _Watched(Generic[T]):
    """A value read from files, read again when any of them changed on disk."""

    def __init__(self, paths: list[Path], load: Callable[[], T]):
        self._paths = paths
        self._load = load
        self._stamp: tuple | None = None
        self._checked = 0.0
        self._value: T | None = None

    def _stat(self) -> tuple:
        out = []
        for p in self._paths:
            try:
                st = p.stat()
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def get(self, *, force: bool = False) -> T:
        now = time.monotonic()
        if self._value is None or force or now - self._checked >= _RECHECK_SECONDS:
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp or self._value is None:
                self._value = self._load()
                self._stamp = stamp
        return self._value


class PublicKeys:
    """The public keys a verifier accepts, by kid: the current one and a recently retired one."""

    def __init__(self, data_dir: str | os.PathLike):
        d = Path(data_dir) / CREDENTIALS_DIR
        self._pub, self._previous = d / PUB_FILE, d / PREVIOUS_PUB_FILE
        self._keys = _Watched([self._pub, self._previous], self._read)
        self._forced = 0.0

    def _read(self) -> dict[str, tuple[ec.EllipticCurvePublicKey, float]]:
        """kid -> (key, accepted until); the current key has no end."""
        try:
            current = read_public(self._pub)
        except FileNotFoundError as e:
            raise Unavailable(f"no registry token public key at {self._pub}") from e
        keys = {kid_of(current): (current, float("inf"))}
        try:
            until = self._previous.stat().st_mtime + MAX_TOKEN_TTL
            prev = read_public(self._previous)
            keys.setdefault(kid_of(prev), (prev, until))
        except FileNotFoundError:
            pass
        return keys

    def _lookup(self, kid: str, *, force: bool = False) -> ec.EllipticCurvePublicKey | None:
        key, until = self._keys.get(force=force).get(kid, (None, 0.0))
        return key if time.time() < until else None

    def get(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        got = self._lookup(kid)
        now = time.monotonic()
        if got is None and now - self._forced >= _RECHECK_SECONDS:
            # A replica may have rotated a moment ago; garbage kids cost one stat a second.
            self._forced = now
            got = self._lookup(kid, force=True)
        return got


class Signer:
    """The current signing key, following a rotation made by another process."""

    def __init__(self, data_dir: str | os.PathLike):
        d = credentials_dir(data_dir)
        load_or_create(data_dir)

        def load() -> SigningKey:
            # Whoever notices a new key republishes its .pub, so the files converge even when
            # a replica starting during a rotation wrote the old one back.
            key = _read_private(d / KEY_FILE)
            _publish(d, key)
            return key
        self._key = _Watched([d / KEY_FILE], load)

    @property
    def key(self) -> SigningKey:
        return self._key.get()


def main(argv: list[str]) -> int:
    """`python -m services.registry_gateway.auth.tokenkeys rotate DATA_DIR`."""
    if len(argv) != 2 or argv[0] != "rotate":
        print("usage: python -m services.registry_gateway.auth.tokenkeys rotate DATA_DIR", file=sys.stderr)
        return 2
    print(f"new registry token key {rotate(argv[1])}; the previous key is accepted for "
          f"{MAX_TOKEN_TTL // 3600} h more")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
