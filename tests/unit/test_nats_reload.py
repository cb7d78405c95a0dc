"""EmbeddedNats.reload: returns once the server runs the new config, and says so when the
server refused it (a changed trusted operator is refused on reload)."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared import bus, credentials, permissions
from shared.errors import Unauthenticated, Unavailable
from shared.natsserver import EmbeddedNats


def test_a_revocation_is_in_force_when_reload_returns(tmp_path):
    cdir = credentials.credentials_dir(tmp_path)
    authority = credentials.Authority(cdir)
    creds = cdir / "x.creds"
    creds.write_text(authority.issue("x", permissions.Permissions(("x.>",), ("_INBOX.x.>",))))
    conf = cdir / "nats-server.conf"
    conf.write_text(authority.server_config())
    with EmbeddedNats(tmp_path / "nats", config_file=conf) as server:
        async def connect():
            nc = await bus.connect(server.url, creds=str(creds), connect_timeout=3)
            await nc.close()

        asyncio.run(connect())
        user = credentials.jwt_claims(credentials.read_creds(creds).jwt)["sub"]
        conf.write_text(authority.server_config({user: int(time.time()) + 1}))
        server.reload()
        with pytest.raises(Unauthenticated):
            asyncio.run(connect())

        # another operator: nats-server keeps its old trust and says why
        (cdir / "operator.jwt").unlink()
        (cdir / "operator.nk").unlink()
        conf.write_text(credentials.Authority(cdir).server_config())
        with pytest.raises(Unavailable, match="refused its new config"):
            server.reload()
