"""The UI's pages and form posts under /ui/ on the registry's listener."""

from __future__ import annotations

import asyncio
import base64
import functools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlencode

import nats.errors
import nats.js.errors
from aiohttp import web
from nats.aio.client import Client as NATS

from shared import subjects
from shared.bus import TypedKV
from shared.errors import DockyardError, InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from shared.layers.compression import is_layer_media_type
from shared.messages.agent import HEARTBEAT_STALE, Heartbeat
from shared.oci.manifest import Index, Manifest, parse_image_config, parse_manifest
from shared.oci.reference import parse_repository
from services.registry_gateway.auth.core import Auth, Principal
from services.registry_gateway.core import Registry
from services.registry_gateway.errors import status_and_code
from services.registry_gateway.keys import REGISTRY

from . import access, pages
from .dive import LayerCache, analyse
from .index import RepoIndex
from .sessions import Session, SessionStore, fingerprint

PAGE_SIZE = 50
LAYER_READS = 4  # layer tars read at once for one image page


@dataclass
class UI:
    auth: Auth
    nc: NATS
    sessions: SessionStore
    index: RepoIndex
    layers: LayerCache | None = None  # made once the registry (and its layer-store client) is open


UI_KEY = web.AppKey("ui", UI)
Handler = Callable[[web.Request, UI, Session, Principal], Awaitable[web.StreamResponse]]


def _render(request: web.Request, ui: UI, session: Session, principal: Principal, title: str, body: str,
            **kw) -> web.Response:
    resp = pages.page(title, body, user=session.username, admin=principal.admin, csrf=ui.sessions.csrf(session), **kw)
    ui.sessions.set_cookie(request, resp, session)
    return resp


async def _current(ui: UI, session: Session) -> Session:
    """The session, if its user still exists with the password it logged in with; else anonymous."""
    if not session.username:
        return session
    rec = await ui.auth.store.get_user(session.username)
    if rec is None or fingerprint(rec.password_hash) != session.fingerprint:
        return ui.sessions.logout(session)
    return session


def handler(fn: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Gives the handler its session and principal; a refusal or failure becomes an HTML page."""
    @functools.wraps(fn)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        ui = request.app[UI_KEY]
        session = await _current(ui, ui.sessions.of(request))
        principal = access.principal_of(ui.auth, session.username)
        try:
            return await fn(request, ui, session, principal)
        except DockyardError as e:
            status = status_and_code(e)[0]
            return _render(request, ui, session, principal, "Error", f"<h1>{status}</h1>", flash=e.message,
                           error=True, status=status)
    return wrapped


async def _form(request: web.Request, ui: UI, session: Session) -> dict[str, str]:
    """The posted form, once its CSRF token proves it came from one of our pages."""
    form = await request.post()
    if not ui.sessions.check_csrf(session, str(form.get("csrf", ""))):
        raise PermissionDenied("the form's CSRF token is missing or wrong: reload the page")
    return {k: str(v) for k, v in form.items()}


def _require_admin(principal: Principal) -> None:
    if not principal.admin:
        raise PermissionDenied("only an admin may do this")


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


# ---- pages ------------------------------------------------------------------------------

@handler
async def repositories(request, ui, session, principal):
    q = request.query.get("q", "").strip().lower()
    try:
        page_no = max(1, int(request.query.get("page", "1")))
    except ValueError as e:
        raise InvalidArgument("page must be a number") from e
    names = [n for n in ui.index.names() if q in n.lower()]
    shown = await access.visible(ui.auth, principal, names)
    pages_n = math.ceil(len(shown) / PAGE_SIZE)
    rows = []
    for name, public in shown[(page_no - 1) * PAGE_SIZE:page_no * PAGE_SIZE]:
        summary = ui.index.repos.get(name)
        rows.append((name, public, summary.size if summary else 0, summary.last_push if summary else 0.0))
    body = pages.repositories_body(rows, q=q, page_no=page_no, pages=pages_n, total=len(shown))
    return _render(request, ui, session, principal, "Repositories", body)


def _repo_param(request: web.Request, key: str) -> str:
    return parse_repository(request.query.get(key, ""))


@handler
async def repository(request, ui, session, principal):
    repo = _repo_param(request, "name")
    await access.require_pull(ui.auth, principal, repo)
    registry = _registry(request)
    tags = await registry.meta.tags(repo)
    links = await asyncio.gather(*(registry.meta.get_manifest(repo, d) for d in tags.values()))
    rows = []
    for tag, link in zip(tags, links):
        if link is None:
            continue
        index = None
        if link.manifests:  # an index: its platforms are in its own (small) body
            _, parsed = parse_manifest(await registry.manifest_body(link), link.media_type)
            index = parsed if isinstance(parsed, Index) else None
        rows.append((tag, link, index))
    rows.sort(key=lambda r: (-r[1].pushed_at, r[0]))
    public = await ui.auth.store.is_public(repo)
    body = pages.repository_body(repo, public, rows, admin=principal.admin, csrf=ui.sessions.csrf(session))
    return _render(request, ui, session, principal, repo, body)


@handler
async def image(request, ui, session, principal):
    repo = _repo_param(request, "repo")
    ref = request.query.get("ref", "latest")
    await access.require_pull(ui.auth, principal, repo)
    registry = _registry(request)
    link = await registry.resolve(repo, ref)
    _, manifest = parse_manifest(await registry.manifest_body(link), link.media_type)
    if isinstance(manifest, Index):
        return _render(request, ui, session, principal, f"{repo}:{ref}", pages.index_body(repo, ref, link, manifest))
    assert isinstance(manifest, Manifest)
    async with registry.store.open_blob(manifest.config.digest) as resp:
        config_body = await resp.read()
    try:
        config = parse_image_config(config_body)
    except InvalidArgument:
        return _render(request, ui, session, principal, f"{repo}@{ref}",
                       pages.artifact_body(repo, ref, link, manifest))
    analysis = None
    if all(is_layer_media_type(d.media_type) for d in manifest.layers):
        sem = asyncio.Semaphore(LAYER_READS)

        async def files(d):
            async with sem:
                return await ui.layers.files(d.digest)
        try:
            analysis = analyse(list(await asyncio.gather(*(files(d) for d in manifest.layers))))
        except (InvalidArgument, NotFound):
            analysis = None  # shown without the file view: the manifest and config still say a lot
    referrers = await registry.meta.referrers(repo, link.digest)
    body = pages.image_body(repo, ref, link, manifest, config, analysis, referrers)
    return _render(request, ui, session, principal, f"{repo}:{ref}", body)


@handler
async def fleet(request, ui, session, principal):
    _require_admin(principal)
    try:
        kv = await ui.nc.jetstream().key_value(subjects.KV_AGENTS)
        beats = [v for _, v, _ in await TypedKV(kv, Heartbeat).items()]
    except nats.js.errors.BucketNotFoundError:
        beats = []
    except nats.errors.Error as e:
        raise Unavailable(f"cannot read the fleet: {e}") from e
    now = time.time()
    agents = sorted((b for b in beats if now - b.time < HEARTBEAT_STALE), key=lambda b: b.agent_id)
    return _render(request, ui, session, principal, "Fleet", pages.fleet_body(agents))


# ---- logging in and out -------------------------------------------------------------------

def _safe_next(value: str) -> str:
    """Only a path of this UI: never an open redirect to another site."""
    return value if value.startswith("/ui/") and not value.startswith("/ui//") and "\\" not in value else "/ui/"


@handler
async def login_page(request, ui, session, principal):
    body = pages.login_body(ui.sessions.csrf(session), _safe_next(request.query.get("next", "/ui/")))
    return _render(request, ui, session, principal, "Log in", body)


@handler
async def login(request, ui, session, principal):
    form = await _form(request, ui, session)
    user, password = form.get("username", ""), form.get("password", "")
    basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        who = await ui.auth.authenticate(basic, client=request.remote or "")
    except (Unauthenticated, Unavailable) as e:
        status = status_and_code(e)[0]
        body = pages.login_body(ui.sessions.csrf(session), _safe_next(form.get("next", "/ui/")))
        return _render(request, ui, session, principal, "Log in", body, flash=e.message, error=True, status=status)
    rec = await ui.auth.store.get_user(who.name) if ui.auth.enabled else None
    ui.sessions.logout(session)
    new = ui.sessions.login(who.name, rec.password_hash if rec else "")
    resp = _see_other(_safe_next(form.get("next", "/ui/")))
    ui.sessions.set_cookie(request, resp, new)
    return resp


@handler
async def logout(request, ui, session, principal):
    await _form(request, ui, session)
    resp = _see_other("/ui/")
    ui.sessions.set_cookie(request, resp, ui.sessions.logout(session))
    return resp


# ---- admin actions ------------------------------------------------------------------------

@handler
async def set_visibility(request, ui, session, principal):
    form = await _form(request, ui, session)
    _require_admin(principal)
    repo = parse_repository(form.get("repo", ""))
    await ui.auth.store.set_visibility(repo, form.get("public") == "1")
    return _see_other("/ui/repo?" + urlencode({"name": repo}))


@handler
async def untag(request, ui, session, principal):
    form = await _form(request, ui, session)
    _require_admin(principal)
    repo = parse_repository(form.get("repo", ""))
    await _registry(request).untag(repo, form.get("tag", ""))
    return _see_other("/ui/repo?" + urlencode({"name": repo}))


async def _to_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/ui/")


def add_routes(app: web.Application) -> None:
    static = resources.files(__package__).joinpath("static")
    app.router.add_get("/ui", _to_index)
    app.router.add_get("/ui/", repositories)
    app.router.add_get("/ui/repo", repository)
    app.router.add_get("/ui/image", image)
    app.router.add_get("/ui/fleet", fleet)
    app.router.add_get("/ui/login", login_page)
    app.router.add_post("/ui/login", login)
    app.router.add_post("/ui/logout", logout)
    app.router.add_post("/ui/visibility", set_visibility)
    app.router.add_post("/ui/untag", untag)
    app.router.add_static("/ui/static/", str(static), append_version=False)
