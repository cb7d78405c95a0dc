"""HTTP requests as a plain client makes them (urllib): the status, headers and body of any
answer, errors included, and Basic credentials for a stack's admin."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

from yarl import URL


def request(url: str | URL, method: str = "GET", data: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(str(url), data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def basic_auth(creds: str) -> dict[str, str]:
    """The Authorization header for "user:password"."""
    return {"Authorization": "Basic " + base64.b64encode(creds.encode()).decode()}
