"""deploy/nats-server.conf grants nothing itself: the generated trust and the table decide."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared import bus_lite, credentials, permissions, subjects
from shared.errors import PermissionDenied, Unauthenticated
from shared.natsserver import EmbeddedNats

DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats-server.conf"


def test_the_deploy_config_has_no_users_of_its_own():
    text = re.sub(r"#.*", "", DEPLOY_CONF.read_text())
    for word in ("users", "password", "permissions", "authorization", "no_auth_user", "$JS.API", "$KV"):
        assert word not in text, word
    assert re.search(r"^include credentials/nats-server.conf$", text, re.M)


@pytest.fixture
def deployed(tmp_path, monkeypatch):
    """A real nats-server from deploy/nats-server.conf, its include pointing at generated trust."""
    authority = credentials.Authority(credentials.credentials_dir(tmp_path))
    trust = tmp_path / credentials.CREDENTIALS_DIR / "nats-server.conf"  # what the include names
    credentials.write_secret(trust, authority.server_config().encode())
    conf = tmp_path / "nats.conf"
    # EmbeddedNats names the store and port on the command line
    conf.write_text(re.sub(r"^\s*store_dir:.*$", "", DEPLOY_CONF.read_text(), flags=re.M))
    monkeypatch.setenv("NATS_SERVER_NAME", "dysec-deploy")
    srv = EmbeddedNats(tmp_path / "js", config_file=conf, log_file=tmp_path / "nats.log")
    srv.start()
    yield srv, authority, tmp_path
    srv.stop()


async def test_the_deployed_server_enforces_the_table(deployed):
    srv, authority, tmp = deployed
    with pytest.raises(Unauthenticated):
        await bus_lite.connect(srv.url, connect_timeout=5)
    paths = {}
    for kind in (subjects.REGISTRY_GATEWAY, subjects.RUNTIME_AGENT):
        paths[kind] = tmp / f"{kind}.creds"
        paths[kind].write_text(authority.issue(permissions.principal(kind, "h1"),
                                               permissions.service(kind, agent_id="h1")))
    gw = await bus_lite.connect(srv.url, creds=str(paths[subjects.REGISTRY_GATEWAY]))
    agent = await bus_lite.connect(srv.url, creds=str(paths[subjects.RUNTIME_AGENT]))
    try:
        create = {"name": f"KV_{subjects.KV_USERS}", "subjects": [f"$KV.{subjects.KV_USERS}.>"],
                  "max_msgs_per_subject": 1, "allow_direct": True}
        reply = json.loads((await gw.nc.request(f"$JS.API.STREAM.CREATE.KV_{subjects.KV_USERS}",
                                                json.dumps(create).encode(), timeout=10)).data)
        assert "error" not in reply, reply
        ack = json.loads((await gw.nc.request(f"$KV.{subjects.KV_USERS}.admin", b"secret", timeout=10)).data)
        assert ack.get("seq") == 1, ack
        with pytest.raises(PermissionDenied):
            await agent.nc.request(f"$JS.API.DIRECT.GET.KV_{subjects.KV_USERS}.$KV.{subjects.KV_USERS}.admin",
                                   b"", timeout=10)
    finally:
        await gw.close()
        await agent.close()
