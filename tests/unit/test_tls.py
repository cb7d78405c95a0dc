"""The fleet CA and node certificates: a real TLS handshake with them, pins, loopback rule."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from shared import tls
from shared.errors import Unauthenticated


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.3.0.9", True), ("::1", True),
                                       ("[::1]", True), ("localhost", True), ("10.77.0.1", False),
                                       ("0.0.0.0", False), ("node1.example", False)])
def test_loopback_addresses_stay_plain(host, loop):
    assert tls.is_loopback(host) is loop
    assert tls.needs_tls(host) is not loop


def test_the_ca_is_made_once_and_keys_are_private(tmp_path):
    pem = tls.ensure_ca(tmp_path)
    assert tls.ensure_ca(tmp_path) == pem
    assert (tmp_path / tls.CA_KEY_FILE).stat().st_mode & 0o077 == 0
    tls.check_pinned(pem, tls.fingerprint(pem))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(Unauthenticated, match="not the one the join token pins"):
        tls.check_pinned(tls.ensure_ca(other), tls.fingerprint(pem))
    with pytest.raises(Unauthenticated, match="not PEM"):
        tls.check_pinned(b"junk", tls.fingerprint(pem))


async def _handshake(cred_dir, server_dir, addr: str) -> str:
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(server_dir / tls.NODE_CERT_FILE, server_dir / tls.NODE_KEY_FILE)

    async def serve(r, w):
        w.write(b"hello\n")
        await w.drain()
        w.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=sctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls.client_context(cred_dir / tls.CA_FILE),
                                             server_hostname=addr)
        line = await r.readline()
        w.close()
        return line.decode()
    finally:
        srv.close()
        await srv.wait_closed()


async def test_a_node_certificate_verifies_for_its_addresses_only(tmp_path):
    tls.ensure_ca(tmp_path)
    tls.ensure_node_cert(tmp_path, "h1", ["10.77.0.1"])
    first = (tmp_path / tls.NODE_CERT_FILE).read_bytes()
    tls.ensure_node_cert(tmp_path, "h1", ["10.77.0.1"])
    assert (tmp_path / tls.NODE_CERT_FILE).read_bytes() == first  # kept while its addresses fit
    assert await _handshake(tmp_path, tmp_path, "10.77.0.1") == "hello\n"
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(tmp_path, tmp_path, "10.77.0.2")
    tls.ensure_node_cert(tmp_path, "h1", ["10.77.0.2"])  # a new --listen: a new certificate
    assert await _handshake(tmp_path, tmp_path, "10.77.0.2") == "hello\n"
    # a certificate from another CA is not trusted
    other = tmp_path / "other"
    other.mkdir()
    tls.ensure_ca(other)
    tls.ensure_node_cert(other, "h9", ["10.77.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(tmp_path, other, "10.77.0.1")
