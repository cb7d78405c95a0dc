"""Auth state on the real nats-server, in buckets of its own per test."""

from __future__ import annotations

import uuid

import pytest

from services.registry_gateway.auth import open_auth
from shared.config import Config


@pytest.fixture
def buckets():
    tag = uuid.uuid4().hex[:10]
    return {"users_bucket": f"dyau-users-{tag}", "acl_bucket": f"dyau-acl-{tag}"}


@pytest.fixture
async def auth(nc, buckets, monkeypatch, tmp_path):
    # bcrypt's real cost is for production; 4 rounds keeps the same code path fast.
    monkeypatch.setenv("DOCKYARD_BCRYPT_ROUNDS", "4")
    a = await open_auth(nc, Config(data_dir=str(tmp_path)), **buckets)
    yield a
    js = nc.jetstream()
    for b in buckets.values():
        await js.delete_key_value(b)
