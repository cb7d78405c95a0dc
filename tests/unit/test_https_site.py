"""HTTPS for the registry-gateway and layer-store listeners: when, with what, and what a client sees."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import aiohttp
import pytest
from aiohttp import web

from services.layer_store.service import advertised_url
from shared import config, http_client, https_site, tls
from shared.errors import InvalidArgument
from shared.registry.stackref import stack_base_url


@pytest.mark.parametrize("mode,addr,https", [
    ("auto", "127.0.0.1:5000", False), ("auto", "[::1]:5000", False), ("auto", "localhost", False),
    ("auto", "10.77.0.1:5000", True), ("auto", "10.77.0.1", True), ("auto", "0.0.0.0:5000", True),
    ("auto", ":5000", True), ("auto", "[fd00::1]:5000", True), ("", "10.77.0.1:5000", True),
    ("on", "127.0.0.1:5000", True), ("off", "10.77.0.1:5000", False), ("OFF", "0.0.0.0:0", False)])
def test_https_off_loopback_unless_told_otherwise(monkeypatch, mode, addr, https):
    monkeypatch.setenv(tls.HTTP_TLS_ENV, mode)
    assert tls.serves_https(addr) is https
    assert tls.http_scheme(addr) == ("https" if https else "http")


def test_the_urls_services_announce_carry_the_scheme_they_serve(monkeypatch):
    for name in ("DOCKYARD_REGISTRY_URL", "DOCKYARD_LAYER_STORE_URL", tls.HTTP_TLS_ENV):
        monkeypatch.delenv(name, raising=False)
    fleet = config.load(registry_addr="10.77.0.1:5000")
    assert fleet.registry_base_url == "https://10.77.0.1:5000"
    assert advertised_url(fleet, "10.77.0.2", 7000) == "https://10.77.0.2:7000"
    assert stack_base_url(config.load(registry_addr="0.0.0.0:5000")) == "https://127.0.0.1:5000"
    local = config.load(registry_addr="127.0.0.1:5000")
    assert (local.registry_base_url, advertised_url(local, "127.0.0.1", 7000)) == (
        "http://127.0.0.1:5000", "http://127.0.0.1:7000")
    # a proxy in front names itself
    monkeypatch.setenv("DOCKYARD_LAYER_STORE_URL", "https://blobs.example/")
    assert advertised_url(config.load(), "10.77.0.2", 7000) == "https://blobs.example"


def test_a_mode_that_is_not_one_is_refused(monkeypatch):
    monkeypatch.setenv(tls.HTTP_TLS_ENV, "maybe")
    with pytest.raises(InvalidArgument, match="DOCKYARD_HTTP_TLS='maybe': want auto, on or off"):
        tls.serves_https("10.0.0.1:5000")


def test_a_missing_node_certificate_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv(tls.HTTP_TLS_ENV, raising=False)
    assert https_site.ssl_for(tmp_path, "127.0.0.1") is None  # loopback needs none
    with pytest.raises(InvalidArgument, match=r"node\.pem .*DOCKYARD_HTTP_TLS=off"):
        https_site.ssl_for(tmp_path, "10.77.0.1")


@pytest.fixture
def fleet_ca(tmp_path):
    """A CA and a node certificate for 127.0.0.1 in tmp_path/credentials; the CA file's path."""
    cdir = tmp_path / "credentials"
    cdir.mkdir()
    tls.ensure_ca(cdir)
    tls.ensure_node_cert(cdir, "node1", ["127.0.0.1"])
    return cdir / tls.CA_FILE


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text=f"hello over {request.scheme}")


async def _serve(cdir):
    """An app on an HTTPS site on 127.0.0.1 (DOCKYARD_HTTP_TLS=on's context), and its port."""
    app = web.Application()
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = https_site.listen_socket("127.0.0.1", 0)
    await https_site.site(runner, sock, tls.server_context(cdir)).start()
    return runner, runner.addresses[0][1]


async def test_a_client_with_the_fleet_ca_gets_its_answer_and_one_without_fails(fleet_ca):
    runner, port = await _serve(fleet_ca.parent)
    try:
        async with http_client.session(str(fleet_ca)) as s:
            async with s.get(f"https://127.0.0.1:{port}/") as r:
                assert (r.status, await r.text()) == (200, "hello over https")
            # keep-alive and a second connection at once both go through the same listener
            texts = await asyncio.gather(*(_text(s, f"https://127.0.0.1:{port}/") for _ in range(5)))
            assert texts == ["hello over https"] * 5
        async with http_client.session() as s:  # the system's CAs only
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await s.get(f"https://127.0.0.1:{port}/")
        async with http_client.session(str(fleet_ca)) as s:  # the fleet's chain, but not the name asked for
            with pytest.raises(aiohttp.ClientConnectorCertificateError, match="other.example"):
                await s.get(f"https://127.0.0.1:{port}/", server_hostname="other.example")
    finally:
        await runner.cleanup()


async def _text(s: aiohttp.ClientSession, url: str) -> str:
    async with s.get(url) as r:
        return await r.text()


async def test_plain_http_to_the_https_port_gets_a_readable_400(fleet_ca):
    runner, port = await _serve(fleet_ca.parent)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/v2/", headers={"X-Pad": "x" * 20000}) as r:
                assert r.status == 400
                assert "this port speaks HTTPS" in await r.text()
        # a client that connects and says nothing does not hold up the others
        idle = socket.create_connection(("127.0.0.1", port))
        try:
            async with http_client.session(str(fleet_ca)) as s:
                assert await _text(s, f"https://127.0.0.1:{port}/") == "hello over https"
        finally:
            idle.close()
    finally:
        await runner.cleanup()


async def test_a_stopped_site_no_longer_accepts(fleet_ca):
    runner, port = await _serve(fleet_ca.parent)
    await runner.cleanup()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()



async def test_client_contexts_are_shared_per_ca_file_until_it_changes(fleet_ca):
    first, again = http_client.connector(str(fleet_ca)), http_client.connector(str(fleet_ca))
    try:
        assert first._ssl is again._ssl and isinstance(first._ssl, ssl.SSLContext)
        stat = fleet_ca.stat()
        os.utime(fleet_ca, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a rejoin rewrote it
        changed = http_client.connector(str(fleet_ca))
        assert changed._ssl is not first._ssl
        await changed.close()
    finally:
        await first.close()
        await again.close()
    with pytest.raises(InvalidArgument, match="cannot read the fleet CA"):
        http_client.connector(str(fleet_ca.parent / "missing.pem"))


async def test_a_bus_services_metrics_listener_speaks_https_when_the_registry_would(fleet_ca, monkeypatch):
    from shared.metrics import exposition
    monkeypatch.setenv(tls.HTTP_TLS_ENV, "on")  # what an address off loopback gets with auto
    monkeypatch.setattr(exposition, "_advertised", [])
    runner = await exposition.serve_standalone("127.0.0.1:0", str(fleet_ca.parent.parent))
    try:
        url = exposition.advertised_url()
        assert url == f"https://127.0.0.1:{runner.addresses[0][1]}/metrics"
        async with http_client.session(str(fleet_ca)) as s:
            async with s.get(url) as r:
                assert r.status == 200 and "python_info" in await r.text()
            async with s.get(url.replace("https:", "http:")) as r:
                assert r.status == 400 and "speaks HTTPS" in await r.text()
    finally:
        await runner.cleanup()
