"""Bus credentials: NATS decentralized JWT auth (operator mode), with nkeys made and signed by PyNaCl.

An operator key signs two accounts (SYS, for the server, and DOCKYARD, for everything of
ours); the DOCKYARD account's signing key signs one user JWT per principal, carrying that
principal's permissions from shared/permissions.py. The server trusts the operator only, so
issuing a credential (a service's, a person's, a joining host's) needs no server change and
no reload: whoever holds the signing key (the registry-gateway) signs a JWT.

Everything lives in DATA_DIR/credentials/ (0700; files 0600). A `.creds` file is NATS's own
format (the user JWT and its nkey seed), which nats-py and `nats` CLI read as they are.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from shared.errors import InvalidArgument, Unauthenticated
from shared.fsutil import fsync_dir, write_atomic

if TYPE_CHECKING:
    from shared.permissions import Permissions

CREDENTIALS_DIR = "credentials"
ADMIN = "admin"  # the local administrator's credential: admin.creds
ACCOUNT = "DOCKYARD"
_JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_KEY_FILES = {"operator": "operator.nk", "sys": "sys-account.nk", "account": "account.nk",
              "signing": "account-signing.nk"}


def inbox_prefix(principal: str) -> str:
    """The reply-subject prefix of `principal`: the only inboxes its credential may subscribe to."""
    return f"_INBOX.{principal}"


def credentials_dir(data_dir: Path) -> Path:
    """DATA_DIR/credentials, created 0700 (and tightened if it was looser)."""
    d = Path(data_dir) / CREDENTIALS_DIR
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    return d


def creds_path(data_dir: Path, principal: str) -> Path:
    """Where `dockyard up` keeps a principal's `.creds` (not created here)."""
    return Path(data_dir) / CREDENTIALS_DIR / f"{principal}.creds"


def write_secret(path: Path, data: bytes) -> None:
    """An atomic write that is 0600 from its creation on."""
    write_atomic(path, data, mode=0o600)


def create_secret_once(path: Path, data: bytes) -> bool:
    """Write a 0600 secret at `path` unless one is there; False if another process made it first.

    Linked into place, never renamed over it: services racing on a first start all end up
    reading the one secret that won."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _new_key(prefix: int):
    import nkeys
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _load_or_create(path: Path, prefix: int):
    import nkeys
    if path.exists():
        return nkeys.from_seed(bytearray(path.read_bytes().strip()))
    kp = _new_key(prefix)
    write_secret(path, kp.seed + b"\n")
    return kp


def _pub(kp) -> str:
    return kp.public_key.decode()


def encode_jwt(claims: dict, signer) -> str:
    """A NATS JWT: `claims` with iat/iss/jti filled in, signed by the nkey `signer`."""
    import hashlib
    claims = {"iat": int(time.time()), "iss": _pub(signer), **claims}
    # jti as the NATS jwt library makes it: base32 of the SHA-256 of the claims without it
    claims["jti"] = base64.b32encode(hashlib.sha256(msgspec.json.encode(claims)).digest()).rstrip(b"=").decode()
    head = _b64(msgspec.json.encode(_JWT_HEADER))
    body = _b64(msgspec.json.encode(claims))
    return f"{head}.{body}.{_b64(signer.sign(f'{head}.{body}'.encode()))}"


def jwt_claims(token: str) -> dict:
    """The claims of a JWT, unverified (the server verifies; the client only reads its name)."""
    try:
        body = token.split(".")[1]
        return msgspec.json.decode(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (IndexError, ValueError, msgspec.DecodeError) as e:
        raise InvalidArgument("not a NATS user JWT") from e


def format_creds(user_jwt: str, seed: bytes) -> str:
    return ("-----BEGIN NATS USER JWT-----\n" f"{user_jwt}\n" "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n" f"{seed.decode()}\n" "------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


class UserCreds:
    __slots__ = ("jwt", "seed")

    def __init__(self, jwt: str, seed: str):
        self.jwt = jwt
        self.seed = seed

    @property
    def name(self) -> str:
        return jwt_claims(self.jwt).get("name", "")

    @property
    def inbox(self) -> str:
        return inbox_prefix(self.name)

    def sign(self, nonce: bytes) -> str:
        """The CONNECT `sig`: the nonce signed with the user's nkey (base64url, no padding)."""
        import nkeys  # ~8 ms of every CLI command (PyNaCl); bench/bus_connect.py measures it
        return _b64(nkeys.from_seed(bytearray(self.seed.encode())).sign(nonce))


def read_creds(path: str | Path) -> UserCreds:
    """The JWT and seed of a `.creds` file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise Unauthenticated(f"cannot read bus credentials {path}: {e.strerror}") from e
    return read_creds_text(text, str(path))


def read_creds_text(text: str, where: str = "the credentials") -> UserCreds:
    """The JWT and seed of a `.creds` text."""
    lines = [ln.strip() for ln in text.splitlines()]
    found: dict[str, str] = {}
    for i, ln in enumerate(lines[:-1]):
        if ln.startswith("-----BEGIN") and ("JWT" in ln or "SEED" in ln):
            found["jwt" if "JWT" in ln else "seed"] = lines[i + 1]
    if set(found) != {"jwt", "seed"}:
        raise Unauthenticated(f"{where} is not a NATS credentials file")
    return UserCreds(found["jwt"], found["seed"])


class Authority:
    """The operator and account keys of one installation: signs accounts and users."""

    def __init__(self, cred_dir: Path, *, signing_only: bool = False):
        import nkeys
        if signing_only:
            # The gateway issues users: it needs the signing key and the account's public key only.
            self.signing = nkeys.from_seed(bytearray((cred_dir / _KEY_FILES["signing"]).read_bytes().strip()))
            self.account_pub = (cred_dir / "account.pub").read_text().strip()
            return
        self._dir = cred_dir
        self.signing = _load_or_create(cred_dir / _KEY_FILES["signing"], nkeys.PREFIX_BYTE_ACCOUNT)
        self.operator = _load_or_create(cred_dir / _KEY_FILES["operator"], nkeys.PREFIX_BYTE_OPERATOR)
        self.sys = _load_or_create(cred_dir / _KEY_FILES["sys"], nkeys.PREFIX_BYTE_ACCOUNT)
        self.account = _load_or_create(cred_dir / _KEY_FILES["account"], nkeys.PREFIX_BYTE_ACCOUNT)
        self.account_pub = _pub(self.account)
        write_secret(cred_dir / "account.pub", (self.account_pub + "\n").encode())

    def issue(self, name: str, perms: "Permissions", *, expires: int = 0) -> str:
        """A `.creds` text for principal `name` with exactly `perms`; `expires` (unix seconds, 0:
        never) makes the server refuse it from then on."""
        import nkeys
        user = _new_key(nkeys.PREFIX_BYTE_USER)
        nats = {"pub": {"allow": list(perms.publish)}, "sub": {"allow": list(perms.subscribe)},
                "subs": -1, "data": -1, "payload": -1, "issuer_account": self.account_pub,
                "type": "user", "version": 2}
        if perms.responses:
            nats["resp"] = {"max": 1, "ttl": 0}  # one reply per message received, default expiry
        claims = {"name": name, "sub": _pub(user), "nats": nats}
        if expires:
            claims["exp"] = int(expires)
        return format_creds(encode_jwt(claims, self.signing), bytes(user.seed))

    def _operator_jwt(self) -> str:
        """The operator JWT, signed once and kept in `operator.jwt`: nats-server refuses a
        reload whose trusted operator differs in any byte (a new `iat` is enough), so the
        revocations of `fleet remove` would never apply if it were signed again."""
        path = self._dir / "operator.jwt"
        try:
            kept = path.read_text().strip()
            claims = jwt_claims(kept)
            if claims.get("sub") == _pub(self.operator) and claims["nats"]["system_account"] == _pub(self.sys):
                return kept
        except (OSError, InvalidArgument, KeyError, TypeError):
            pass  # none yet, or one of other keys: signed below
        op_jwt = encode_jwt({"name": "dockyard", "sub": _pub(self.operator), "nats": {
            "system_account": _pub(self.sys), "type": "operator", "version": 2}}, self.operator)
        write_secret(path, (op_jwt + "\n").encode())
        return op_jwt

    def server_config(self, revoked: dict[str, int] | None = None) -> str:
        """The nats-server config (trust, accounts) that makes every client present a user JWT;
        `revoked` (user public key -> unix time) lists credentials the account refuses."""
        unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
                     "conn": -1, "leaf": -1}
        sys_jwt = encode_jwt({"name": "SYS", "sub": _pub(self.sys), "nats": {
            "limits": unlimited, "type": "account", "version": 2}}, self.operator)
        acc_jwt = encode_jwt({"name": ACCOUNT, "sub": self.account_pub, "nats": {
            "limits": {**unlimited, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1},
            "signing_keys": [_pub(self.signing)], "type": "account", "version": 2,
            **({"revocations": revoked} if revoked else {})}}, self.operator)
        op_jwt = self._operator_jwt()
        return "\n".join([
            # A CONNECT carries the user JWT, whose permission lists pass the 4 KB default.
            "max_control_line: 65536",
            # Each closed connection is kept for monitoring, 10,000 by default, and each CLI
            # command is one, with its JWT: over days that is the server's RSS (the soak found it).
            "max_closed_clients: 100",
            f"operator: {op_jwt}",
            f"system_account: {_pub(self.sys)}",
            "resolver: MEMORY",
            "resolver_preload: {",
            f"  {_pub(self.sys)}: {sys_jwt}",
            f"  {self.account_pub}: {acc_jwt}",
            "}", ""])
