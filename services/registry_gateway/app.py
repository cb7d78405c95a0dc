"""The registry-gateway's aiohttp application: the OCI distribution API v1.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web
from nats.aio.client import Client as NATS

from shared import codec, http_client, subjects
from shared.admission import Admission
from shared.dataplane_sign import DataplaneSigner
from shared.layer_store_client import LayerStoreClient
from shared.metrics import exposition
from shared.metrics import http as http_metrics
from shared.registry_meta import RegistryMeta
from services.registry_gateway import accesslog, admission as gate, blobs, httputil, manifests, ui
from services.registry_gateway.authz import CATALOG_ACTIONS, Authorizer
from services.registry_gateway.core import Registry
from services.registry_gateway.errors import error_middleware
from services.registry_gateway.keys import (ADMISSION, AUTHORIZER, BLOB_REDIRECT, DIRECT_UPLOAD, REGISTRY, SIGNER,
                                            UPLOAD_HOOK)

# Big reads off the socket: blob bodies are copied to the layer-store in as few steps as can be.
READ_BUFSIZE = 4 << 20


async def base(request: web.Request) -> web.Response:
    """`/v2/`: the API version check, which is also where clients meet the auth challenge."""
    await request.app[AUTHORIZER].authorize(request, None, frozenset())
    return web.json_response({}, headers=httputil.API_HEADERS)


async def catalog(request: web.Request) -> web.Response:
    await request.app[AUTHORIZER].authorize(request, None, CATALOG_ACTIONS)
    n, last = httputil.pagination(request)
    names = await request.app[REGISTRY].meta.list_repositories(last=last)
    page = names if n is None else names[:n]
    headers = {**httputil.API_HEADERS, **httputil.next_link(request.path, n, page, len(names) > len(page))}
    return web.Response(body=codec.encode({"repositories": page}), content_type="application/json",
                        headers=headers)


def create_app(nc: NATS, authorizer: Authorizer, *, signer: DataplaneSigner,
               extra_routes: Iterable[web.AbstractRouteDef] = (), blob_redirect: str = "off",
               direct_upload: str = "off", upload_hook: str = subjects.UPLOAD_COMMITTED,
               meta_suffix: str = "", layer_store_url: str | None = None,
               admission: Admission | None = None, ca_file: str = "") -> web.Application:
    """The gateway app over one NATS connection; it opens its metadata and layer-store client
    on start-up and closes them on clean-up. `extra_routes` carries the token endpoint;
    `signer` holds the data-plane key the layer-store checks.
    Direct uploads need a bus endpoint answering `upload_hook` (`blobs.register_upload_hook`).
    `admission` bounds the requests in flight (default: from DOCKYARD_MAX_INFLIGHT and co).
    `ca_file`: the fleet CA a layer-store serving HTTPS is verified with."""
    admission = admission or Admission.from_env()
    app = web.Application(middlewares=[http_metrics.middleware, *accesslog.middlewares(), gate.middleware(admission),
                                       error_middleware],
                          client_max_size=1 << 20,
                          handler_args={"read_bufsize": READ_BUFSIZE})

    async def resources(app: web.Application) -> AsyncIterator[None]:
        # No total timeout: blob bodies take as long as they take (the client bounds silence).
        session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None),
                                        connector=http_client.connector(ca_file, limit=0),
                                        read_bufsize=READ_BUFSIZE)
        try:
            store = LayerStoreClient(nc, session, signer=signer, url=layer_store_url)
            app[REGISTRY] = Registry(await RegistryMeta.open(nc, suffix=meta_suffix), store, nc)
            yield
        finally:
            await session.close()

    app.cleanup_ctx.append(resources)
    app[AUTHORIZER] = authorizer
    app[ADMISSION] = admission
    app[SIGNER] = signer
    app[BLOB_REDIRECT] = blob_redirect
    app[DIRECT_UPLOAD] = direct_upload
    app[UPLOAD_HOOK] = upload_hook
    app.router.add_get("/v2/", base)
    app.router.add_get("/v2", base)
    app.router.add_get("/v2/_catalog", catalog)
    exposition.add_route(app)  # loopback clients or DOCKYARD_METRICS_TOKEN, not registry users
    # uploads before blobs: `/blobs/uploads/` must not be read as a blob digest
    app.add_routes(blobs.upload_routes)
    app.add_routes(blobs.routes)
    app.add_routes(manifests.routes)
    app.add_routes(list(extra_routes))
    ui.mount(app, nc, authorizer)
    return app
