"""The bus refuses whoever has no business there: real `dockyard up`, real nats-server, real clients."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from shared import bus_blocking, bus_lite, credentials, permissions, subjects
from shared.errors import PermissionDenied, Unauthenticated
from tests.e2e.conftest import start_stack, stop_stack

pytestmark = pytest.mark.e2e

SERVICE_KINDS = [*subjects.ALL_SERVICES, permissions.SUPERVISOR]
AGENT_ID = "dysec-agent"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("dysec"), only=["layer-store", "registry-gateway"])
    yield s
    assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition("@")[2].split("://")[-1].partition(":")
    return host, int(port)


def raw_connect(url: str, connect: dict) -> bytes:
    """A plain socket speaking the NATS protocol: INFO, then CONNECT and PING; what the server says."""
    with socket.create_connection(host_port(url), timeout=10) as sock:
        f = sock.makefile("rb")
        info = f.readline()
        assert info.startswith(b"INFO ")
        sock.sendall(b"CONNECT " + json.dumps({"verbose": False, "pedantic": False, **connect}).encode()
                     + b"\r\nPING\r\n")
        return f.readline()


def test_no_credentials_are_refused(stack):
    assert raw_connect(stack.nats_url, {}).startswith(b"-ERR 'Authorization Violation'")


def test_a_password_is_refused(stack):
    reply = raw_connect(stack.nats_url, {"user": "admin", "pass": stack.admin_password})
    assert reply.startswith(b"-ERR 'Authorization Violation'")


def test_a_credential_of_another_installation_is_refused(stack, tmp_path):
    foreign = credentials.Authority(credentials.credentials_dir(tmp_path))
    path = tmp_path / "foreign.creds"
    path.write_text(foreign.issue("user-admin", permissions.role("admin", "admin")))

    async def go():
        with pytest.raises(Unauthenticated, match="Authorization Violation"):
            await bus_lite.connect(stack.nats_url, creds=str(path), connect_timeout=5)
    asyncio.run(go())


def test_a_forged_signature_is_refused(stack):
    """The admin's JWT without the admin's key: the nonce signed by someone else's seed."""
    admin = credentials.read_creds(credentials.creds_path(stack.data_dir, credentials.ADMIN))
    with socket.create_connection(host_port(stack.nats_url), timeout=10) as sock:
        f = sock.makefile("rb")
        nonce = json.loads(f.readline()[5:])["nonce"]
        other = credentials.UserCreds(admin.jwt, credentials.read_creds(
            credentials.creds_path(stack.data_dir, permissions.SUPERVISOR)).seed)
        connect = {"verbose": False, "jwt": admin.jwt, "sig": other.sign(nonce.encode())}
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        assert f.readline().startswith(b"-ERR 'Authorization Violation'")


def test_the_local_admin_credential_is_accepted(stack):
    admin = credentials.read_creds(credentials.creds_path(stack.data_dir, credentials.ADMIN))
    with socket.create_connection(host_port(stack.nats_url), timeout=10) as sock:
        f = sock.makefile("rb")
        nonce = json.loads(f.readline()[5:])["nonce"]
        connect = {"verbose": False, "jwt": admin.jwt, "sig": admin.sign(nonce.encode())}
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        assert f.readline() == b"PONG\r\n"


def test_credentials_live_in_a_private_directory(stack):
    cdir = stack.data_dir / credentials.CREDENTIALS_DIR
    assert cdir.stat().st_mode & 0o777 == 0o700
    files = list(cdir.iterdir())
    assert {"admin.creds", "registry-gateway.creds", "layer-store.creds", "supervisor.creds",
            "nats-server.conf", "account-signing.nk"} <= {p.name for p in files}
    secrets = [p for p in files if p.suffix != ".pub"]  # public keys are meant to be read
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in secrets} == {p.name: "0o600" for p in secrets}
    assert all(p.stat().st_mode & 0o022 == 0 for p in files)


# ---- least privilege, table-driven over every service kind -----------------------------------

# Subjects some service must never publish, and the KV buckets it must never read.
FORBIDDEN_CALLS = [subjects.REGISTRY_USER_ADD, subjects.REGISTRY_GRANT, subjects.REGISTRY_TOKEN,
                   subjects.agent("someone-else", "run"), subjects.BUILD, subjects.GC_RUN, subjects.BLOB_DELETE]
FORBIDDEN_BUCKETS = [subjects.KV_USERS, subjects.KV_ACL, subjects.KV_AGENTS, subjects.KV_BUILD_CACHE, subjects.KV_GC]


def service_perms(kind: str) -> permissions.Permissions:
    return permissions.service(kind, agent_id=AGENT_ID)


def may_publish(kind: str, subject: str) -> bool:
    return any(permissions.matches(p, subject) for p in service_perms(kind).publish)


@pytest.fixture(scope="module")
def service_creds(stack, tmp_path_factory):
    """Each kind's credential as `dockyard up` issues it (same keys, same table)."""
    d = tmp_path_factory.mktemp("dysec-creds")
    authority = credentials.Authority(stack.data_dir / credentials.CREDENTIALS_DIR)
    out = {}
    for kind in SERVICE_KINDS:
        path = d / f"{kind}.creds"
        path.write_text(authority.issue(permissions.principal(kind, AGENT_ID), service_perms(kind)))
        out[kind] = str(path)
    return out


def test_the_table_keeps_auth_state_and_agents_apart():
    """The claims of the design, checked on the table itself (the server checks below enforce it)."""
    for kind in SERVICE_KINDS:
        reads_auth = any(permissions.matches(p, f"$JS.API.STREAM.INFO.KV_{b}") or
                         permissions.matches(p, f"$KV.{b}.x")
                         for p in service_perms(kind).publish for b in permissions.AUTH_STATE)
        assert reads_auth == (kind == subjects.REGISTRY_GATEWAY), kind
    agent = service_perms(subjects.RUNTIME_AGENT)
    assert not any(permissions.matches(p, subjects.agent("other", "run")) for p in agent.publish)
    assert not any(permissions.matches(p, subjects.agent("other", "run")) for p in agent.subscribe)
    assert not any(permissions.matches(p, subjects.REGISTRY_USER_ADD) for p in agent.publish)


@pytest.mark.parametrize("kind", SERVICE_KINDS)
async def test_a_service_is_refused_outside_its_table(stack, service_creds, kind):
    c = await bus_lite.connect(stack.nats_url, name=f"dysec-{kind}", creds=service_creds[kind])
    try:
        refused_calls = [s for s in FORBIDDEN_CALLS if not may_publish(kind, s)]
        assert len(refused_calls) >= 3, kind
        for subject in refused_calls:
            with pytest.raises(PermissionDenied):
                await c.nc.request(subject, b"{}", timeout=10)
        buckets = [b for b in FORBIDDEN_BUCKETS if not may_publish(kind, f"$JS.API.STREAM.INFO.KV_{b}")]
        assert buckets, kind
        for b in buckets:
            for subject in (f"$JS.API.STREAM.INFO.KV_{b}", f"$JS.API.DIRECT.GET.KV_{b}.$KV.{b}.admin",
                            f"$KV.{b}.admin"):
                with pytest.raises(PermissionDenied):
                    await c.nc.request(subject, b"{}", timeout=10)
        # and what it may do works: JetStream answers it
        info = json.loads((await c.nc.request("$JS.API.INFO", b"", timeout=10)).data)
        assert "error" not in info, info
    finally:
        await c.close()


async def test_an_agent_cannot_listen_to_another_agent(stack, service_creds):
    """A subscription outside the table is refused by the server (it says so on the connection)."""
    c = await bus_lite.connect(stack.nats_url, creds=service_creds[subjects.RUNTIME_AGENT])
    try:
        await c.nc.subscribe(subjects.agent("someone-else", ">"))
        await c.nc.subscribe(credentials.inbox_prefix(permissions.person("admin")) + ".>")
        await c.nc.flush()  # the server answers SUBs (with -ERR) before the PING after them
        assert "permissions violation for subscription" in c.nc._error.lower()
    finally:
        await c.close()


# ---- people: roles from the command line ----------------------------------------------------

@pytest.fixture(scope="module")
def people(stack, tmp_path_factory):
    """reader, operator and admin users, each with bus credentials from `dockyard user creds`."""
    d = tmp_path_factory.mktemp("dysec-people")
    out = {}
    for name, role in (("rita", "reader"), ("otto", "operator"), ("ada", "admin")):
        stack.cli("user", "add", name, "--role", role, "--password-stdin", input="pw-" + name)
        p = stack.cli("user", "creds", name)
        path = d / f"{name}.creds"
        path.write_text(p.stdout)
        out[role] = str(path)
    return out


def test_the_first_admin_user_is_admin_on_the_bus(stack, tmp_path):
    path = tmp_path / "admin.creds"
    path.write_text(stack.cli("user", "creds", "admin").stdout)
    out = stack.cli("--creds", str(path), "user", "add", "zed", "--password-stdin", input="pw").stdout
    assert "user zed added" in out


def test_a_new_user_has_no_bus_role(stack):
    stack.cli("user", "add", "nobody", "--password-stdin", input="pw")
    p = stack.cli("user", "creds", "nobody", check=False)
    assert p.returncode != 0 and "has no role on the bus" in p.stderr


async def test_a_reader_reads_but_cannot_run(stack, people):
    assert "AGENT" in stack.cli("--creds", people["reader"], "agents").stdout
    p = stack.cli("--creds", people["reader"], "tag", "busybox", "busybox:other", check=False)
    assert p.returncode != 0
    assert "permission denied: tag needs role operator" in p.stderr
    # the agent verb itself (placement refuses an unknown host before the bus is asked)
    c = await bus_lite.connect(stack.nats_url, creds=people["reader"])
    try:
        with pytest.raises(PermissionDenied):
            await c.nc.request(subjects.agent(AGENT_ID, "run"), b"{}", timeout=10)
    finally:
        await c.close()


def test_the_loopless_client_signs_in_and_is_refused_as_the_lean_one(stack, people, tmp_path):
    """shared.bus_blocking (`dockyard ps`, `agents`) authenticates the same way: the nonce
    signed with the credential's nkey; a foreign credential and none are refused, and the
    server's publish refusal becomes PermissionDenied."""
    drive = bus_blocking.drive
    with pytest.raises(Unauthenticated):
        drive(bus_blocking.connect(stack.nats_url, connect_timeout=5))
    other = tmp_path / "other.creds"
    other.write_text(credentials.Authority(credentials.credentials_dir(tmp_path / "elsewhere"))
                     .issue("user-admin", permissions.role("admin", "admin")))
    with pytest.raises(Unauthenticated):
        drive(bus_blocking.connect(stack.nats_url, creds=str(other), connect_timeout=5))
    c = drive(bus_blocking.connect(stack.nats_url, creds=people["reader"], connect_timeout=5))
    try:
        with pytest.raises(PermissionDenied):
            drive(c.nc.request(subjects.agent(AGENT_ID, "run"), b"{}", timeout=10))
        assert drive(c.kv_entries(subjects.KV_AGENTS)) == []  # a reader may list the fleet
    finally:
        drive(c.close())


@pytest.mark.parametrize("verb", [subjects.AGENT_RUN_HOST_BIND, subjects.AGENT_RUN_PRIVILEGED,
                                  subjects.AGENT_EXEC_PRIVILEGED])
async def test_only_an_admin_may_bind_outside_the_volume_roots(stack, people, verb):
    """An operator credential is not root on every host: the agent verbs that bind any host
    path or run --privileged are refused by the server for operators (and readers), whatever
    the agent would say."""
    host_bind = subjects.agent(AGENT_ID, verb)
    assert permissions.required_role(host_bind) == "admin"
    for role in ("reader", "operator"):
        c = await bus_lite.connect(stack.nats_url, creds=people[role])
        try:
            with pytest.raises(PermissionDenied):
                await c.nc.request(host_bind, b"{}", timeout=10)
        finally:
            await c.close()
    c = await bus_lite.connect(stack.nats_url, creds=people["admin"])
    try:  # allowed: no agent of that id runs here, so nobody answers, but the server lets it through
        with pytest.raises(Exception) as ei:
            await c.nc.request(host_bind, b"{}", timeout=2)
        assert not isinstance(ei.value, PermissionDenied), ei.value
    finally:
        await c.close()


def test_an_operator_cannot_add_users(stack, people):
    p = stack.cli("--creds", people["operator"], "user", "add", "mallory", "--password-stdin",
                  input="pw", check=False)
    assert p.returncode != 0
    assert "permission denied: user needs role admin" in p.stderr
    p = stack.cli("--creds", people["operator"], "user", "creds", "otto", check=False)
    assert "permission denied: user needs role admin" in p.stderr


def test_an_admin_adds_users(stack, people):
    out = stack.cli("--creds", people["admin"], "user", "add", "newbie", "--role", "reader",
                    "--password-stdin", input="pw").stdout
    assert "newbie added (bus role: reader)" in out


def test_a_role_can_change(stack, people, tmp_path):
    stack.cli("user", "add", "rita", "--update", "--role", "operator")
    path = tmp_path / "rita.creds"
    path.write_text(stack.cli("user", "creds", "rita").stdout)
    p = stack.cli("--creds", str(path), "gc", "status", check=False)
    assert "permission denied: gc needs role admin" in p.stderr
    # the old credential keeps the role it was issued with
    p = stack.cli("--creds", people["reader"], "rmi", "nothing", check=False)
    assert "permission denied: rmi needs role operator" in p.stderr


async def test_a_person_answers_what_a_service_sent_it_and_nothing_else(stack, service_creds):
    """An agent's keep-alive ping to a streaming CLI: the person may reply to it, but may not
    publish into a service's inbox on its own."""
    agent = await bus_lite.connect(stack.nats_url, creds=service_creds[subjects.RUNTIME_AGENT])
    person = await bus_lite.connect(stack.nats_url,
                                    creds=str(credentials.creds_path(stack.data_dir, credentials.ADMIN)))
    try:
        cli_inbox = person.nc.new_inbox()
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        async def on_ping(m) -> None:
            await m.respond(b"pong")
            await person.nc.publish(m.reply.rsplit(".", 1)[0] + ".forged", b"x")
            got.set_result(m.reply)
        await person.nc.subscribe(cli_inbox, cb=on_ping)
        await person.nc.flush()
        pong = await agent.nc.request(cli_inbox, b"ping", timeout=10)
        assert pong.data == b"pong"
        await got
        await person.nc.flush()  # the -ERR of the forged PUB comes before this PONG
        assert "permissions violation for publish" in person.nc._error.lower()
    finally:
        await agent.close()
        await person.close()
