"""Signed URLs of the blob data plane: the registry-gateway signs, the layer-store verifies.

A request to the layer-store carries `?exp=<unix seconds>&sig=<hex HMAC-SHA256>` over
its method, path, blob digest and expiry, with a key only the two services read
(DATA_DIR/credentials/dataplane.key). The gateway signs after it has authorized the
client, so a signature is a short-lived capability for one blob or one upload session:

    signer = DataplaneSigner(load_key(cfg.data_path))
    url = signer.signed_url(base, "GET", f"/v2/{repo}/blobs/{digest}", digest)
    signer.verify(request.method, request.path, digest, request.query.get("exp"),
                  request.query.get("sig"))                   # PermissionDenied if not valid

HEAD is signed and checked as GET (it reveals less). An upload session's URL is signed
for the scope UPLOAD instead of one method: the client PATCHes, PUTs, GETs and DELETEs
it, with a digest it names only at the end.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import stat
import time
from pathlib import Path
from urllib.parse import urlencode

from shared.errors import PermissionDenied, Unavailable
from shared.credentials import CREDENTIALS_DIR, create_secret_once, credentials_dir

KEY_FILE = Path(CREDENTIALS_DIR) / "dataplane.key"
KEY_BYTES = 32
UPLOAD = "UPLOAD"  # the scope of an upload session's URL (any of its methods)
DOWNLOAD_TTL = 600.0  # a blob GET handed to a client
# An upload URL lives as long as its session may: idle sessions are reclaimed after a day
# (the GC's default), and each reply on the session hands out a renewed URL.
UPLOAD_TTL = 24 * 3600.0
INTERNAL_TTL = 60.0  # a service's own request, checked once when it arrives
DENIED = "DENIED"


def key_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / KEY_FILE


def load_key(data_dir: Path | str) -> bytes:
    """The data-plane key, made on first use (0600 in a 0700 dir; the first writer wins a race)."""
    path = key_path(data_dir)
    credentials_dir(Path(data_dir))
    if not path.exists():
        create_secret_once(path, secrets.token_hex(KEY_BYTES).encode() + b"\n")
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise Unavailable(f"{path} is open to others (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError as e:
        raise Unavailable(f"{path} does not hold a hex key") from e
    if len(key) < KEY_BYTES:
        raise Unavailable(f"{path} holds a key shorter than {KEY_BYTES} bytes")
    return key


class DataplaneSigner:
    """Signs and verifies data-plane requests with one shared key."""

    def __init__(self, key: bytes):
        if len(key) < KEY_BYTES:
            raise ValueError(f"a data-plane key has at least {KEY_BYTES} bytes")
        self._key = key

    def signature(self, method: str, path: str, digest: str, exp: int) -> str:
        msg = "\n".join((_scope(method), path, digest, str(exp))).encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def sign(self, method: str, path: str, digest: str = "", ttl: float = DOWNLOAD_TTL,
             now: float | None = None) -> dict[str, str]:
        """The query parameters (`exp`, `sig`) that open `method path` until now + ttl."""
        exp = int((time.time() if now is None else now) + ttl)
        return {"exp": str(exp), "sig": self.signature(method, path, digest, exp)}

    def signed_url(self, base: str, method: str, path: str, digest: str = "",
                   ttl: float = DOWNLOAD_TTL) -> str:
        return f"{base}{path}?{urlencode(self.sign(method, path, digest, ttl))}"

    def verify(self, method: str, path: str, digest: str, exp: str | None, sig: str | None,
               now: float | None = None) -> None:
        """PermissionDenied unless `sig` is this key's signature of the request, unexpired."""
        if not exp or not sig:
            raise PermissionDenied("the data plane answers only URLs signed by the registry",
                                   detail_code=DENIED)
        if not (len(exp) <= 12 and exp.isascii() and exp.isdigit() and sig.isascii()):
            raise PermissionDenied("malformed signature", detail_code=DENIED)
        expected = self.signature(method, path, digest, int(exp))
        if not hmac.compare_digest(expected, sig):
            raise PermissionDenied("signature does not match the request", detail_code=DENIED)
        if int(exp) < (time.time() if now is None else now):
            raise PermissionDenied("signed URL expired", detail_code=DENIED)


def _scope(method: str) -> str:
    method = method.upper()
    return "GET" if method == "HEAD" else method
