"""AWS Signature Version 4 for S3 requests (header-based signing, no SDK).

Pure functions over strings and bytes, so that the signer can be checked against a
reference implementation and used by synchronous code (test fixtures) too.
The path is signed exactly as it is sent: S3 wants each key byte URI-encoded once,
with `/` kept, and no path normalisation (unlike the other AWS services).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import NamedTuple
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class Credentials(NamedTuple):
    access_key: str
    secret_key: str


def uri_encode(value: str, *, keep_slash: bool = False) -> str:
    """RFC 3986 encoding as SigV4 defines it: only A-Z a-z 0-9 - . _ ~ stay as they are."""
    return quote(value, safe="/~" if keep_slash else "~")


def encode_path(bucket: str, key: str = "") -> str:
    """The path of a path-style request: `/<bucket>/<key>`, each byte of the key encoded once."""
    path = "/" + uri_encode(bucket)
    if key:
        path += "/" + uri_encode(key, keep_slash=True)
    return path


def canonical_query(query: Iterable[tuple[str, str]]) -> str:
    """Sorted by encoded name, then encoded value; a bare name is signed as `name=`."""
    pairs = sorted((uri_encode(k), uri_encode(v)) for k, v in query)
    return "&".join(f"{k}={v}" for k, v in pairs)


def _canonical_header_value(value: str) -> str:
    return " ".join(value.strip().split())


def canonical_request(method: str, path: str, query: str, headers: Mapping[str, str],
                      payload_hash: str) -> tuple[str, str]:
    """The canonical request and its signed-headers list (every header given is signed)."""
    lowered = sorted((k.lower(), _canonical_header_value(v)) for k, v in headers.items())
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in lowered)
    signed = ";".join(k for k, _ in lowered)
    return "\n".join([method, path, query, canonical_headers, signed, payload_hash]), signed


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(method: str, host: str, path: str, query: Iterable[tuple[str, str]],
         headers: Mapping[str, str], payload_hash: str, creds: Credentials, region: str,
         service: str = "s3", now: dt.datetime | None = None) -> dict[str, str]:
    """The headers to send: the given ones plus host, x-amz-date, x-amz-content-sha256
    and Authorization. `path` must already be encoded (see `encode_path`)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    out = {k.lower(): v for k, v in headers.items()}
    out["host"] = host
    out["x-amz-date"] = amz_date
    out["x-amz-content-sha256"] = payload_hash
    creq, signed = canonical_request(method, path, canonical_query(query), out, payload_hash)
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    signature = hmac.new(signing_key(creds.secret_key, date, region, service), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    out["authorization"] = (f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
                            f"SignedHeaders={signed}, Signature={signature}")
    return out
