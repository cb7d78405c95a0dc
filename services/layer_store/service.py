"""`dockyard serve layer-store`: the HTTP data plane, then the bus verbs."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import socket
import ssl
from pathlib import Path

from aiohttp import web

from services.layer_store import metrics
from services.layer_store.bus_api import LayerStoreApi
from services.layer_store.http import READ_BUFSIZE, create_app
from services.layer_store.storage.base import StorageDriver
from services.layer_store.storage.filesystem import FilesystemDriver
from shared import bus, https_site, subjects
from shared.config import Config, split_host_port
from shared.dataplane_sign import DataplaneSigner, load_key
from shared.errors import InvalidArgument, Unavailable
from shared.fsutil import write_atomic
from shared.tls import http_scheme

log = logging.getLogger("dockyard.layer_store")
PORT_FILE = "http-port"


def advertised_url(cfg: Config, host: str, port: int) -> str:
    """How others reach the data plane: DOCKYARD_LAYER_STORE_URL, else the bound address
    (https:// where it serves HTTPS)."""
    if cfg.layer_store_url:
        return cfg.layer_store_url.rstrip("/")
    scheme = http_scheme(host)
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def open_driver(cfg: Config) -> "StorageDriver":
    """The storage driver `DOCKYARD_STORAGE_DRIVER` names: filesystem (default) or s3."""
    kind = cfg.env("STORAGE_DRIVER", "filesystem")
    if kind == "s3":
        from services.layer_store.storage.s3 import S3Driver
        return S3Driver.from_env()
    if kind != "filesystem":
        raise InvalidArgument(f"unknown storage driver {kind!r} (filesystem or s3)")
    return FilesystemDriver(cfg.service_dir(subjects.LAYER_STORE))


async def listen(runner: web.AppRunner, host: str, port: int, port_file: Path,
                 ssl_context: ssl.SSLContext | None = None) -> int:
    """Bind the data plane (HTTPS with `ssl_context`); returns the port. With port 0, the port
    of the previous run is tried first: clients hold URLs on it (direct upload sessions, blob
    redirects) that must still answer after a restart, so that an interrupted upload can resume."""
    try:
        candidates = [port] if port else [int(port_file.read_text()), 0]
    except (OSError, ValueError):
        candidates = [0]
    for i, p in enumerate(candidates):
        try:
            sock = https_site.listen_socket(host, p)
            break
        except OSError as e:
            if i == len(candidates) - 1:
                raise Unavailable(f"layer-store cannot listen on {host}:{p}: {e}") from e
            log.warning("port %d of the previous run is taken (%s): listening on a new one", p, e)
    await https_site.site(runner, sock, ssl_context).start()
    bound = runner.addresses[0][1]
    if not port:
        write_atomic(port_file, str(bound).encode())
    return bound


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_MMAP_THRESHOLD = 1 << 20


def return_big_buffers_to_the_os() -> None:
    """Pin glibc's mmap threshold at 1 MiB.

    The layer-store moves blobs in buffers of MiBs (8 MiB S3 segments). glibc raises its
    threshold to the largest buffer freed, after which such buffers come from the heaps
    of the threads that hashed them and stay resident when freed: a 1 GiB push then left
    the process 20-40 MiB bigger. Pinned, every big buffer is its own mapping, unmapped
    on free."""
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        except (OSError, AttributeError):  # not glibc: its own allocator's defaults
            log.debug("mallopt unavailable", exc_info=True)


async def serve(cfg: Config) -> None:
    """Run until cancelled: HTTP first, then the bus service once it can answer."""
    return_big_buffers_to_the_os()
    signer = DataplaneSigner(load_key(cfg.data_path))
    driver = open_driver(cfg)
    nc = await bus.connect(cfg.nats_url, name=subjects.LAYER_STORE)
    runner: web.AppRunner | None = None
    svc: bus.BusService | None = None
    try:
        host, port = split_host_port(cfg.layer_store_addr)
        client = bus.BusClient(nc)
        api = LayerStoreApi(driver, client, "")
        app = create_app(driver, signer, on_commit=api.on_commit, commit_hook=api.commit_hook)
        runner = web.AppRunner(app, access_log=None, read_bufsize=READ_BUFSIZE)
        await runner.setup()
        bound = await listen(runner, host, port, cfg.service_dir(subjects.LAYER_STORE) / PORT_FILE,
                             https_site.ssl_for(cfg.data_path, host))
        api.url = advertised_url(cfg, host, bound)
        metrics.watch(driver)
        svc = bus.BusService(nc, subjects.LAYER_STORE, description="blob bytes, content-addressed",
                             metadata={"url": api.url, "driver": driver.name, "metrics": f"{api.url}/metrics"})
        api.register(svc)
        await svc.start()
        log.info("layer-store serving %s (data in %s)", api.url, driver.root)
        await asyncio.Event().wait()
    finally:
        if svc is not None:
            await svc.stop()
        if runner is not None:
            await runner.cleanup()  # closes the driver (the app owns it)
        else:
            await driver.close()
        try:
            await nc.drain()
        except Exception:  # already closed or unreachable: nothing left to flush
            log.debug("NATS drain failed", exc_info=True)
