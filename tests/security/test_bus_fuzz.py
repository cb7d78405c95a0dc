"""Every request subject the services register survives garbage.

A whole stack (`dockyard up`: its own nats-server and every service, the agent among
them) is started once. The subjects come from the services themselves (`$SRV.INFO`
lists each endpoint with its request type and bound), checked against
shared/subjects.py and the agent's verbs, so a new subject is fuzzed as soon as it is
registered, and one that is declared but not served fails here. Each gets
hypothesis-generated payloads that do not decode as its request (bytes, JSON of the
wrong shape, its own fields with values of the wrong type), an empty payload where
that is not the defaults, and a payload over its bound: each must be answered with
an INVALID_ARGUMENT reply that names the request, never INTERNAL and never silence.
Then every service still answers `$SRV.PING` and a valid request.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import os
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import bus, codec, credentials, fleet, subjects
from shared.errors import InvalidArgument
from shared.messages import agent as agent_messages
from shared.messages.common import ErrorReply
from shared.oci.digest import Digest
from tests.e2e.conftest import start_stack, stop_stack

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="the stack's agent needs root and an OCI runtime")]

EXAMPLES_PER_SUBJECT = 30
# Declared in shared/subjects.py without being a request subject anyone serves.
NOT_SERVED = {"AGENT_PREFIX": "the prefix of per-agent subjects",
              "AGENT_ANY": "a queue-group name of the agents, not a subject",
              "REGISTRY_INFO": "declared, served by nothing: the gateway's URL is in its $SRV metadata"}


class Endpoint(msgspec.Struct, frozen=True):
    service: str
    subject: str
    request_type: type
    max_bytes: int
    empty_ok: bool


@pytest.fixture(scope="module")
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tag = f"{os.getpid() % 10000}"
    isolated = {"DOCKYARD_AGENT_ID": f"dyfz{tag}", "DOCKYARD_BRIDGE": f"dyfzb{tag}",
                "DOCKYARD_NET_PREFIX": f"dyfz{tag}", "DOCKYARD_CGROUP_PARENT": f"/dyfz{tag}",
                "DOCKYARD_SUBNET": f"10.232.{os.getpid() % 250}.0/24"}
    with pytest.MonkeyPatch.context() as mp:  # `up` hands its environment to the services
        for k, v in isolated.items():
            mp.setenv(k, v)
        s = start_stack(tmp_path_factory.mktemp("bus-fuzz"))
    try:
        yield s
    finally:
        assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def nc(stack, loop):
    conn = loop.run_until_complete(bus.connect(stack.nats_url, name="dyfz-fuzzer"))
    yield conn
    loop.run_until_complete(conn.drain())


@pytest.fixture(scope="module")
def endpoints(nc, loop) -> list[Endpoint]:
    infos = loop.run_until_complete(_service_infos(nc))
    out = []
    for info in infos:
        for ep in info.get("endpoints") or []:
            meta = ep.get("metadata") or {}
            module, _, name = meta["request"].rpartition(".")
            out.append(Endpoint(info["name"], ep["subject"], getattr(importlib.import_module(module), name),
                                int(meta["max_bytes"]), meta["empty"] == "default"))
    return sorted(out, key=lambda e: e.subject)


async def _service_infos(nc) -> list[dict]:
    """$SRV.INFO of every service kind, once all have answered."""
    client = bus.BusClient(nc)
    for _ in range(100):
        infos = await client.gather("$SRV.INFO", None, dict, timeout=2)  # no early end: the join exchange answers too
        if {i["name"] for i in infos} >= set(subjects.ALL_SERVICES):
            return infos
        await asyncio.sleep(0.1)
    raise AssertionError(f"not every service answered $SRV.INFO: {[i['name'] for i in infos]}")


def _agent_id(endpoints: list[Endpoint]) -> str:
    ids = {e.subject.split(".")[2] for e in endpoints if e.service == subjects.RUNTIME_AGENT
           and not e.subject.startswith(agent_messages.FLEET_PREFIX + ".")}
    assert len(ids) == 1, ids
    return ids.pop()


def test_every_declared_subject_is_served_and_so_fuzzed(endpoints):
    served = {e.subject for e in endpoints}
    declared = {name: value for name, value in vars(subjects).items()
                if name.isupper() and isinstance(value, str) and value.startswith(subjects.PREFIX + ".")
                and not value.startswith("dockyard.events.") and name not in NOT_SERVED}
    # the join exchange's subjects live beside its messages
    declared.update({f"fleet.{n}": v for n, v in vars(fleet).items()
                     if n.isupper() and isinstance(v, str) and v.startswith(fleet.PREFIX + ".")})
    assert {n: v for n, v in declared.items() if v not in served} == {}
    agent = _agent_id(endpoints)
    verbs = [v for n, v in vars(agent_messages).items() if n.startswith("VERB_")] + [subjects.AGENT_RUN_HOST_BIND]
    assert sorted(v for v in verbs if subjects.agent(agent, v) not in served) == []
    assert {agent_messages.fleet(agent_messages.VERB_PS), agent_messages.fleet(agent_messages.VERB_IMAGES)} <= served
    # Every endpoint is a declared subject, an agent verb or a fleet listing: none is unaccounted for.
    per_agent = subjects.AGENT_PREFIX + "."
    assert sorted(s for s in served if s not in declared.values() and not s.startswith(per_agent)) == []


# ---- garbage ---------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def garbage(typ: type) -> st.SearchStrategy[bytes]:
    """Payloads of every kind a confused or hostile publisher sends."""
    names = [f.encode_name for f in msgspec.structs.fields(typ)]
    own_fields = (st.fixed_dictionaries({}, optional={n: _json for n in names}) if names
                  else st.dictionaries(st.text(max_size=8), _json, max_size=3))
    as_json = st.one_of(_json, own_fields).map(lambda v: json.dumps(v).encode())
    return st.one_of(
        st.binary(min_size=1, max_size=256),
        as_json,
        as_json.flatmap(lambda b: st.integers(1, max(1, len(b) - 1)).map(lambda n: b[:n])),  # cut short
        st.text(min_size=1, max_size=64).map(str.encode),
    )


def _decodes(typ: type, data: bytes) -> bool:
    try:
        codec.decoder(typ).decode(data)
        return True
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False


async def _ask(nc, subject: str, data: bytes) -> tuple[str, str]:
    """(error code, message) of the reply; ("", "") for a success."""
    resp = await nc.request(subject, data, timeout=10)
    if not (resp.headers or {}).get(bus.ERROR_CODE_HEADER):
        return "", ""
    err = codec.decode(resp.data, ErrorReply)
    return err.code, err.message


def _assert_refused(ep: Endpoint, data: bytes, got: tuple[str, str]) -> None:
    code, message = got
    assert code == InvalidArgument.code, (ep.subject, data[:200], got)
    assert ep.request_type.__name__ in message and ep.subject in message, (ep.subject, message)


def test_garbage_on_every_subject_is_refused_by_name(endpoints, nc, loop):
    refused: dict[str, int] = {}
    for ep in endpoints:
        refused[ep.subject] = 0

        @settings(max_examples=EXAMPLES_PER_SUBJECT, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        @given(data=garbage(ep.request_type))
        def fuzz(data: bytes) -> None:
            if _decodes(ep.request_type, data):
                return  # a valid request: not garbage, and it might really do something
            _assert_refused(ep, data, loop.run_until_complete(_ask(nc, ep.subject, data)))
            refused[ep.subject] += 1

        fuzz()
    assert {s: n for s, n in refused.items() if n < EXAMPLES_PER_SUBJECT // 3} == {}


# ---- valid requests with hostile values ----------------------------------------------------

# These act on what their values name outside the stack (registries on the network, files
# on the host), so random values are not sent to them; their garbage still is, above.
NOT_SENT_VALID = {
    "run": "pulls the image its value names, from any registry",
    subjects.AGENT_RUN_HOST_BIND: "pulls, and binds any host path",
    "pull": "pulls from any registry",
    subjects.REGISTRY_COPY: "copies to and from any registry",
    subjects.BUILD: "FROM pulls from any registry",
    subjects.BUILD_IMPORT: "imports from a blob into any tag",
    subjects.REGISTRY_ENSURE_ADMIN: "writes the admin password to the file its value names",
}


def values_of(t: mi.Type) -> st.SearchStrategy:
    """JSON values that decode as type `t`: the edge of what a handler receives."""
    if isinstance(t, mi.StructType):
        return st.fixed_dictionaries({f.encode_name: values_of(f.type) for f in t.fields if f.required},
                                     optional={f.encode_name: values_of(f.type) for f in t.fields if not f.required})
    if isinstance(t, mi.CustomType) and t.cls is Digest:
        return st.binary(max_size=8).map(lambda b: str(Digest.from_bytes(b)))
    simple = {mi.StrType: st.text(max_size=40), mi.BoolType: st.booleans(), mi.NoneType: st.none(),
              mi.IntType: st.integers(-(1 << 63), (1 << 63) - 1), mi.AnyType: _json,
              mi.FloatType: st.floats(allow_nan=False, allow_infinity=False),
              mi.BytesType: st.binary(max_size=16).map(lambda b: base64.b64encode(b).decode())}
    if type(t) in simple:
        return simple[type(t)]
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return st.lists(values_of(t.item_type), max_size=4)
    if isinstance(t, mi.DictType):
        return st.dictionaries(st.text(max_size=8), values_of(t.value_type), max_size=3)
    if isinstance(t, mi.UnionType):
        return st.one_of(*(values_of(u) for u in t.types))
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    raise NotImplementedError(f"no strategy for {t!r}: teach values_of this request field type")


def test_valid_requests_with_hostile_values_never_crash_a_handler(endpoints, nc, loop):
    agent = _agent_id(endpoints)
    skipped = {subjects.agent(agent, k) if "." not in k else k for k in NOT_SENT_VALID}
    for ep in endpoints:
        if ep.subject in skipped:
            continue

        @settings(max_examples=EXAMPLES_PER_SUBJECT // 2, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(value=values_of(mi.type_info(ep.request_type)))
        def fuzz(value) -> None:
            data = json.dumps(value).encode()
            code, message = loop.run_until_complete(_ask(nc, ep.subject, data))
            assert code != "INTERNAL", (ep.subject, data[:300], message)

        fuzz()


def test_empty_payloads_are_the_defaults_only_where_that_is_harmless(endpoints, nc, loop):
    for ep in endpoints:
        got = loop.run_until_complete(_ask(nc, ep.subject, b""))
        if ep.empty_ok:
            assert got[0] != InvalidArgument.code or "empty" not in got[1], (ep.subject, got)
        else:
            _assert_refused(ep, b"", got)
            assert "empty" in got[1]
    destructive = {subjects.GC_RUN, subjects.BUILDER_PRUNE, subjects.agent(_agent_id(endpoints), "prune")}
    assert not any(e.empty_ok for e in endpoints if e.subject in destructive)


def test_over_the_subject_bound_is_refused_naming_the_bound(endpoints, nc, loop):
    limit = nc.max_payload
    for ep in endpoints:
        if not ep.max_bytes or ep.max_bytes >= limit:
            continue
        data = b'{"padding": "' + b"x" * ep.max_bytes + b'"}'
        got = loop.run_until_complete(_ask(nc, ep.subject, data))
        _assert_refused(ep, data, got)
        assert f"over its bound of {ep.max_bytes}" in got[1]


def test_over_max_payload_the_server_refuses_the_publisher(stack, nc, loop):
    async def publish_too_much() -> bytes:
        url = urlsplit(stack.nats_url.split(",")[0])
        reader, writer = await asyncio.open_connection(url.hostname, url.port or 4222)
        try:
            info = json.loads((await reader.readline()).split(b" ", 1)[1])
            admin = credentials.read_creds(credentials.creds_path(stack.data_dir, credentials.ADMIN))
            auth = {"jwt": admin.jwt, "sig": admin.sign(info["nonce"].encode())}
            writer.write(b"CONNECT " + json.dumps({"verbose": False, "pedantic": False, **auth}).encode()
                         + b"\r\nPING\r\n")
            assert (await reader.readline()).startswith(b"PONG"), "the fuzzer could not connect"
            n = info["max_payload"] + 1
            writer.write(f"PUB {subjects.GC_STATUS} {n}\r\n".encode() + b"x" * n + b"\r\n")
            try:
                await writer.drain()
            except ConnectionResetError:
                pass  # it may close on us before reading the rest; its -ERR was sent first
            return await asyncio.wait_for(reader.readline(), 10)
        finally:
            writer.close()

    assert b"Maximum Payload" in loop.run_until_complete(publish_too_much())


def test_every_service_still_answers_ping_and_a_valid_request(endpoints, nc, loop):
    # Runs last in this module: after all the garbage above.
    client = bus.BusClient(nc)

    async def check() -> None:
        # the whole window: other responders (the join exchange of `up`) must not end it early
        pings = await client.gather("$SRV.PING", None, dict, timeout=2)
        assert {p["name"] for p in pings} >= set(subjects.ALL_SERVICES)
        agent = _agent_id(endpoints)
        valid = {subjects.BLOB_USAGE: b"{}", subjects.REGISTRY_IMAGES: b"{}",
                 subjects.BUILD_CONTEXT_MISSING: b'{"digests": []}', subjects.GC_STATUS: b"",
                 subjects.agent(agent, agent_messages.VERB_PS): b'{"all": true}',
                 agent_messages.fleet(agent_messages.VERB_IMAGES): b""}
        for subject, data in valid.items():
            assert await _ask(nc, subject, data) == ("", ""), subject

    loop.run_until_complete(check())
