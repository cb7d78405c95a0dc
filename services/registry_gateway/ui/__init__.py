"""The registry and fleet web UI at /ui/ on the registry's own listener (`DOCKYARD_UI=off`: none).

Server-rendered pages over the same Registry, Auth and KV records the OCI API and the bus
verbs use; see routes.py for the pages, sessions.py for logging in.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from aiohttp import web
from nats.aio.client import Client as NATS

from services.registry_gateway.auth.core import Auth
from services.registry_gateway.keys import REGISTRY

from .dive import LayerCache
from .index import RepoIndex
from .routes import UI, UI_KEY, add_routes
from .sessions import SessionStore


def enabled() -> bool:
    return os.environ.get("DOCKYARD_UI", "on").lower() not in ("off", "false", "0", "no")


def mount(app: web.Application, nc: NATS, authorizer: object) -> None:
    """Add the UI to the gateway app (after its registry start-up), when it is on and the
    gateway has users to log in: an authorizer that is no Auth cannot tell who is asking."""
    if not enabled() or not isinstance(authorizer, Auth):
        return
    ui = UI(auth=authorizer, nc=nc, sessions=SessionStore(), index=RepoIndex())
    app[UI_KEY] = ui

    async def follow(app: web.Application) -> AsyncIterator[None]:
        registry = app[REGISTRY]
        ui.layers = LayerCache(registry.store)
        await ui.index.start(registry.meta)
        try:
            yield
        finally:
            await ui.index.stop()

    app.cleanup_ctx.append(follow)
    add_routes(app)
    from . import admin  # after routes: it uses their handler wrapper
    admin.add_routes(app)


__all__ = ["enabled", "mount"]
