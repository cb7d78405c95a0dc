"""One registry client over aiohttp, as skopeo behaves: the Docker token flow (a token per
repository scope, fetched on the first 401 challenge and again when it expires), redirects
followed for GET/HEAD, and a 429 or 503 waited out for as long as Retry-After says, then
sent again (the body too: every body here can be made again)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from bench.loadgen.stats import Stats

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
MAX_RETRY_AFTER = 10.0  # a longer Retry-After is still honoured, up to this
MAX_ATTEMPTS = 60


class LoadError(Exception):
    """A reply the load run did not expect: counted as an error."""


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL


Body = bytes | Callable[[], object] | None  # a factory of a fresh async iterator of bytes


class RegistryClient:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, creds: tuple[str, str] | None,
                 stats: Stats, *, respect_retry_after: bool = True):
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.creds = creds
        self.stats = stats
        self.respect_retry_after = respect_retry_after
        self._tokens: dict[str, str] = {}  # scope -> bearer token

    def url(self, path: str) -> URL:
        return URL(self.base_url + path, encoded=True)

    async def request(self, method: str, target: str | URL, *, scope: str = "", headers: dict | None = None,
                      data: Body = None, sink: Callable[[bytes], None] | None = None,
                      ok: tuple[int, ...] = (200,)) -> Reply:
        """Send until answered: with a token for `scope` once challenged, after Retry-After when
        throttled. `sink` receives a GET's body in pieces (not kept). A final status outside
        `ok` raises LoadError."""
        url = target if isinstance(target, URL) else self.url(target)
        challenged = False
        for attempt in range(MAX_ATTEMPTS):
            reply = await self._send(method, url, scope, headers, data, sink)
            if reply.status == 401 and self.creds and not challenged:
                challenge = reply.headers.get("WWW-Authenticate", "")
                if challenge.lower().startswith("bearer "):
                    await self._login(scope, dict(_CHALLENGE_PARAM.findall(challenge)))
                    challenged = True
                    continue
            if reply.status in (429, 503) and self.respect_retry_after:
                await self._throttled(reply)
                continue
            if reply.status not in ok:
                raise LoadError(f"{method} {url.path}: {reply.status} {reply.body[:200]!r}")
            return reply
        raise LoadError(f"{method} {url.path}: still throttled after {MAX_ATTEMPTS} attempts")

    async def _throttled(self, reply: Reply) -> None:
        self.stats.throttled += 1
        raw = reply.headers.get("Retry-After")
        if raw is None:
            self.stats.retry_after_missing += 1
        try:
            wait = float(raw) if raw is not None else 1.0
        except ValueError:
            wait = 1.0
        await asyncio.sleep(min(wait, MAX_RETRY_AFTER))

    async def _send(self, method: str, url: URL, scope: str, headers: dict | None, data: Body,
                    sink: Callable[[bytes], None] | None) -> Reply:
        hdrs = dict(headers or {})
        token = self._tokens.get(scope)
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        body = data() if callable(data) else data
        self.stats.requests += 1
        async with self.http.request(method, url, headers=hdrs, data=body,
                                     allow_redirects=method in ("GET", "HEAD")) as r:
            self.stats.requests += len(r.history)
            self.stats.statuses[r.status] += 1
            if sink is not None and r.status in (200, 206):
                async for piece in r.content.iter_chunked(1 << 20):
                    sink(piece)
                content = b""
            else:
                content = await r.read()
            return Reply(r.status, r.headers, content, r.url)

    async def _login(self, scope: str, challenge: dict[str, str]) -> None:
        scopes = {s for s in [*scope.split(), challenge.get("scope", "")] if s}
        query = [("service", challenge.get("service", ""))] + [("scope", s) for s in sorted(scopes)]
        url = URL(challenge["realm"]).update_query(query)
        for attempt in range(MAX_ATTEMPTS):
            self.stats.requests += 1
            t0 = time.monotonic()
            async with self.http.get(url, headers={"Authorization": aiohttp.encode_basic_auth(*self.creds)}) as r:
                self.stats.statuses[r.status] += 1
                body = await r.read()
                if r.status in (429, 503) and self.respect_retry_after:
                    await self._throttled(Reply(r.status, r.headers, body, r.url))
                    continue
                if r.status != 200:
                    raise LoadError(f"token endpoint answered {r.status}: {body[:200]!r}")
                got = await r.json(content_type=None)
            self.stats.op("token", time.monotonic() - t0)
            self._tokens[scope] = got.get("token") or got.get("access_token")
            return
        raise LoadError("token endpoint: still throttled")

    def forget_tokens(self) -> None:
        """As a new skopeo process would start: no token yet."""
        self._tokens.clear()
