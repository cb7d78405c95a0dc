"""`dockyard serve registry-gateway`: the OCI distribution API plus the image verbs on the bus."""

from __future__ import annotations

import asyncio
import logging
import socket

from aiohttp import web

from shared import bus, https_site, subjects
from shared.config import Config, split_host_port
from shared.dataplane_sign import DataplaneSigner, load_key
from shared.errors import Unavailable
from services.registry_gateway import blobs, bus_credentials, copy, images
from services.registry_gateway.app import create_app
from services.registry_gateway.keys import REGISTRY, UPLOAD_HOOK

log = logging.getLogger("dockyard.registry")


def _site(runner: web.AppRunner, cfg: Config) -> web.BaseSite:
    """The socket `dockyard up` bound for us (DOCKYARD_REGISTRY_FD: the port stays across our
    restarts), else our own listener on `registry_addr`; HTTPS off loopback."""
    host, port = split_host_port(cfg.registry_addr)
    fd = cfg.env("REGISTRY_FD")
    if fd:
        sock = socket.socket(fileno=int(fd))
    else:
        try:
            sock = https_site.listen_socket(host, port)
        except OSError as e:
            raise Unavailable(f"registry-gateway cannot listen on {cfg.registry_addr}: {e.strerror}") from e
    return https_site.site(runner, sock, https_site.ssl_for(cfg.data_path, cfg.registry_addr))


async def serve(cfg: Config) -> None:
    """Serve until cancelled; the bus endpoints start once HTTP listens."""
    nc = await bus.connect(cfg.nats_url, name=subjects.REGISTRY_GATEWAY)
    runner: web.AppRunner | None = None
    service: bus.BusService | None = None
    try:
        from services.registry_gateway.auth import open_auth
        auth = await open_auth(nc, cfg)
        app = create_app(nc, auth, signer=DataplaneSigner(load_key(cfg.data_path)),
                         extra_routes=auth.routes(),
                         blob_redirect=cfg.env("REGISTRY_BLOB_REDIRECT", "auto").lower(),
                         direct_upload=cfg.env("REGISTRY_DIRECT_UPLOAD", "auto").lower(),
                         layer_store_url=cfg.layer_store_url or None, ca_file=cfg.fleet_ca)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await _site(runner, cfg).start()
        registry = app[REGISTRY]
        service = bus.BusService(nc, subjects.REGISTRY_GATEWAY, description="OCI distribution API",
                                 metadata={"url": cfg.registry_base_url,
                                           "metrics": f"{cfg.registry_base_url}/metrics"})
        images.register(service, registry)
        blobs.register_upload_hook(service, registry, app[UPLOAD_HOOK])
        auth.register_bus(service)
        bus_credentials.register(service, auth.store, cfg)
        copy.register(service, registry=registry, auth=auth, cfg=cfg)
        await service.start()
        log.info("registry-gateway listening on %s", cfg.registry_addr)
        await asyncio.Event().wait()
    finally:
        if service is not None:
            await service.stop()
        if runner is not None:
            await runner.cleanup()
        await nc.drain()
