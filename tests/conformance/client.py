"""A small raw registry client: the Docker token flow, and two ways of following `Location`.

`absolute` resolves a `Location` against the URL of the request that returned it, as
RFC 7231 says (an absolute URL is followed as it is). `path` keeps only its path and
query and sends them to the registry's own host, as the OCI suite's client does
(reggie's `GetRelativeLocation`). The spec allows a registry either kind of
`Location`; a client of either kind must be able to use it.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

ABSOLUTE, PATH = "absolute", "path"
MODES = (ABSOLUTE, PATH)
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')

# A body: bytes, or a factory of a fresh stream (sent chunked, with no Content-Length),
# so that a request answered 401 can be sent again after the token flow.
Body = bytes | Callable[[], AsyncIterator[bytes]] | None


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL

    def json(self):
        return json.loads(self.body)

    @property
    def is_json(self) -> bool:
        return self.headers.get("Content-Type", "").split(";")[0].strip().endswith("json") and bool(self.body)

    def error_codes(self) -> list[str]:
        return [e["code"] for e in self.json()["errors"]]


@dataclass
class Client:
    """One registry client; its tokens accumulate scopes as a docker client's do."""

    http: aiohttp.ClientSession
    base_url: str
    creds: tuple[str, str] | None
    mode: str = ABSOLUTE
    _token: str | None = None
    _scopes: list[str] = field(default_factory=list)

    def location(self, reply: Reply) -> URL:
        """Where a reply's `Location` sends the next request, in this client's way."""
        raw = reply.headers.get("Location")
        assert raw, f"{reply.status} reply without Location"
        return self.resolve(raw, reply)

    def resolve(self, raw: str, reply: Reply) -> URL:
        """A URI reference a reply handed out (`Location`, a `Link` target), in this client's way."""
        loc = URL(raw, encoded=True)
        if self.mode == ABSOLUTE:
            return reply.url.join(loc)
        query = f"?{loc.raw_query_string}" if loc.raw_query_string else ""
        return self.url(loc.raw_path + query)

    def url(self, path: str) -> URL:
        return URL(self.base_url + path, encoded=True)

    async def request(self, method: str, target: str | URL, *, params: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None, data: Body = None,
                      scopes: tuple[str, ...] = ()) -> Reply:
        """Send one request (a path on the registry, or a URL); on a Bearer challenge, get a
        token for the challenged scope plus `scopes` and every scope asked before, and retry once."""
        url = target if isinstance(target, URL) else self.url(target)
        if params:
            # Appended to the query as it came: a Location's opaque state must reach the registry
            # byte for byte (yarl would decode and re-encode it).
            sep = "&" if url.raw_query_string else "?"
            url = URL(f"{url}{sep}{urlencode(params)}", encoded=True)
        for scope in scopes:
            if scope not in self._scopes:
                self._scopes.append(scope)
        reply = await self._send(method, url, headers, data)
        challenge = reply.headers.get("WWW-Authenticate", "")
        if reply.status == 401 and self.creds and challenge.lower().startswith("bearer "):
            await self._login(dict(_CHALLENGE_PARAM.findall(challenge)))
            reply = await self._send(method, url, headers, data)
        return reply

    async def _send(self, method: str, url: URL, headers: dict[str, str] | None, data: Body) -> Reply:
        hdrs = dict(headers or {})
        if self._token:
            hdrs["Authorization"] = f"Bearer {self._token}"
        body = data() if callable(data) else data
        # Redirects (a blob GET may be sent to where the bytes are) are followed as any HTTP client does.
        async with self.http.request(method, url, headers=hdrs, data=body,
                                     allow_redirects=method in ("GET", "HEAD")) as r:
            return Reply(r.status, r.headers, await r.read(), r.url)

    async def _login(self, challenge: dict[str, str]) -> None:
        wanted = challenge.get("scope")
        if wanted and wanted not in self._scopes:
            self._scopes.append(wanted)
        query = [("service", challenge.get("service", ""))] + [("scope", s) for s in self._scopes]
        async with self.http.get(URL(challenge["realm"]).update_query(query),
                                 headers={"Authorization": aiohttp.encode_basic_auth(*self.creds)}) as r:
            assert r.status == 200, f"token endpoint answered {r.status}: {await r.text()}"
            got = await r.json()
        self._token = got.get("token") or got.get("access_token")
