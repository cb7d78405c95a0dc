"""A gateway with the UI on the session's NATS: real layer-store, real Auth, buckets of its own."""

from __future__ import annotations

import base64
import contextlib
import os
import uuid
from dataclasses import dataclass

import aiohttp
import pytest_asyncio

from shared import bus
from shared.config import Config
from shared.dataplane_sign import DataplaneSigner, load_key
from shared.registry_meta import RegistryMeta
from services.registry_gateway.auth import GatewayAuth, open_auth
from tests.unit.registry.conftest import running_gateway, running_layer_store

ADMIN_PW, ALICE_PW = "admin-pw", "alice-pw"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class UIEnv:
    url: str
    auth: GatewayAuth
    nc: object
    suffix: str
    signer: DataplaneSigner
    http: aiohttp.ClientSession  # for pushes (the registry API, auth as admin)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ui_env(nats_url, tmp_path_factory):
    nc = await bus.connect(nats_url, name="dyui-test")
    tag = uuid.uuid4().hex[:8]
    suffix, users, acl = f"-dyui{tag}", f"dyui-users-{tag}", f"dyui-acl-{tag}"
    data = tmp_path_factory.mktemp("dyui")
    signer = DataplaneSigner(load_key(data / "ls"))
    old_rounds = os.environ.get("DOCKYARD_BCRYPT_ROUNDS")
    os.environ["DOCKYARD_BCRYPT_ROUNDS"] = "4"  # the real cost is for production; same code path
    try:
        async with running_layer_store(nc, str(data / "ls"), nats_url):
            auth = await open_auth(nc, Config(data_dir=str(data / "gw")), users_bucket=users, acl_bucket=acl)
            await auth.store.add_user("admin", ADMIN_PW)
            await auth.store.add_user("alice", ALICE_PW)
            await auth.store.grant("alice", "team/*", "pull")
            async with running_gateway(nc, suffix, auth, signer=signer) as url, \
                    aiohttp.ClientSession(headers={"Authorization": basic("admin", ADMIN_PW)}) as http:
                yield UIEnv(url, auth, nc, suffix, signer, http)
    finally:
        if old_rounds is None:
            os.environ.pop("DOCKYARD_BCRYPT_ROUNDS", None)
        else:
            os.environ["DOCKYARD_BCRYPT_ROUNDS"] = old_rounds
        js = nc.jetstream()
        for name in [*RegistryMeta.bucket_names(suffix), users, acl]:
            with contextlib.suppress(Exception):
                await js.delete_key_value(name)
        await nc.drain()
