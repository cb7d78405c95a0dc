"""Browser sessions of the web UI: an opaque id in a cookie, the user it logged in as here.

Every visitor has a session id (a fresh random one until they log in), and every form carries
a CSRF token derived from it with a key of this process: a page of another site can neither
read the token nor (SameSite=Strict) send the cookie. Logging in issues a new id, so an id
planted before the login is worth nothing after it. Sessions live in this process's memory,
bounded: a restart logs everyone out, which costs a login, never access.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

COOKIE = "dyui_session"
SESSION_TTL = 12 * 3600.0
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    id: str
    username: str  # "" while anonymous
    expires: float = 0.0
    # of the password hash it logged in with: a changed password or a removed user ends it
    fingerprint: str = ""


def fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()


class SessionStore:
    def __init__(self, *, ttl: float = SESSION_TTL, max_sessions: int = MAX_SESSIONS):
        self._key = secrets.token_bytes(32)
        self._ttl = ttl
        self._max = max_sessions
        self._live: OrderedDict[str, Session] = OrderedDict()

    def of(self, request: web.Request) -> Session:
        """The request's session: its logged-in one, else an anonymous one under its cookie id
        (or a new id, which `set_cookie` then hands out)."""
        sid = request.cookies.get(COOKIE, "")
        found = self._live.get(sid)
        if found is not None:
            if found.expires > time.time():
                return found
            del self._live[sid]
        if len(sid) != 43:  # token_urlsafe(32); anything else is not an id we gave out
            sid = secrets.token_urlsafe(32)
        return Session(sid, "")

    def login(self, username: str, password_hash: str) -> Session:
        s = Session(secrets.token_urlsafe(32), username, time.time() + self._ttl, fingerprint(password_hash))
        self._live[s.id] = s
        while len(self._live) > self._max:
            self._live.popitem(last=False)
        return s

    def logout(self, session: Session) -> Session:
        self._live.pop(session.id, None)
        return Session(secrets.token_urlsafe(32), "")

    def csrf(self, session: Session) -> str:
        return hmac.new(self._key, session.id.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session: Session, token: str) -> bool:
        return hmac.compare_digest(self.csrf(session), token or "")

    @staticmethod
    def set_cookie(request: web.Request, response: web.StreamResponse, session: Session) -> None:
        response.set_cookie(COOKIE, session.id, path="/ui/", httponly=True, samesite="Strict",
                            secure=request.secure)
