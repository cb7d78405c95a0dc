"""Who may publish and subscribe what on the bus: one table, per service kind and per person role.

NATS enforces it: the generated credentials (shared/credentials.py) carry these lists, and
deploy/nats-server.conf is checked against them. Everything is derived from shared/subjects.py.

JetStream KV access is expressed as the subjects the server checks: reading a bucket is
stream info, direct/message get and (for watchers, `keys`, listings) creating, reading and
deleting a consumer on its stream; writing is publishing to `$KV.<bucket>.>` plus creating
and purging the stream. A principal receives replies only under its own inbox prefix
(`_INBOX.<name>.`), so one client cannot read another's replies.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import subjects as s
from shared import fleet
from shared.credentials import inbox_prefix
from shared.messages.agent import (FLEET_PREFIX, VERB_IMAGES, VERB_INSPECT, VERB_KILL, VERB_LOGS, VERB_PS,
                                   VERB_PULL, VERB_RM, VERB_RUN, VERB_START, VERB_STOP)
from shared.messages.gc import AGENT_PRUNE_VERB
from shared.messages.verbs import ADMIN_VERBS, OPERATOR_VERBS, READER_VERBS
from shared.messages import volumes as _vol
from shared.messages import networks as net

SUPERVISOR = "supervisor"  # `dockyard up` itself: waits for services, creates the admin user
ROLES = ("reader", "operator", "admin")  # each includes the one before it

# The registry's metadata buckets (shared/registry_meta): the gateway writes them, GC deletes from them.
REGISTRY_META = (s.KV_REPOSITORIES, s.KV_TAGS, s.KV_MANIFESTS, s.KV_REFERRERS, s.KV_UPLOADS, s.KV_BLOB_LINKS)
AUTH_STATE = (s.KV_USERS, s.KV_ACL)  # users, grants and token keys: the gateway's alone

EVENTS = f"{s.PREFIX}.events.>"
# every KV bucket dockyard keeps state in: shared.subjects names each KV_*
STATE_BUCKETS = tuple(v for k, v in sorted(vars(s).items()) if k.startswith("KV_") and isinstance(v, str))
AGENT_VERB_EXEC = "exec"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # may answer a message it received (NATS allow_responses), wherever its reply subject is:
    # people answer an agent's keep-alive pings while a container's output streams to them
    responses: bool = False


def principal(kind: str, agent_id: str = "") -> str:
    """The name a service instance's credential carries: one per agent host, one per other kind."""
    return f"{kind}-{agent_id}" if kind == s.RUNTIME_AGENT else kind


def person(username: str) -> str:
    """The principal of a person's credential; never a service's name, so never a service's inbox."""
    if not username or any(c in username for c in ".*> \t"):
        raise ValueError(f"{username!r} cannot name a bus principal")
    return f"user-{username}"


def kv_read(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>", f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>", f"$JS.FC.{stream}.>", f"$JS.ACK.{stream}.>"]


def kv_write(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return kv_read(bucket) + [f"$KV.{bucket}.>", f"$JS.API.STREAM.CREATE.{stream}",
                              f"$JS.API.STREAM.UPDATE.{stream}", f"$JS.API.STREAM.PURGE.{stream}"]


def kv_write_own(bucket: str, key_prefix: str) -> list[str]:
    """Read the bucket, create it, and write (put, delete, purge) only keys under `key_prefix`."""
    return kv_read(bucket) + [f"$KV.{bucket}.{key_prefix}.>", f"$JS.API.STREAM.CREATE.KV_{bucket}"]


def _agent_verbs(*verbs: str) -> list[str]:
    return [s.agent("*", v) for v in verbs]


def _principal(name: str, *, calls: list[str], serves: list[str], reads: tuple[str, ...] = (),
               writes: tuple[str, ...] = (), events: list[str] = (), listens: list[str] = ()) -> Permissions:
    """`calls`: requests it sends; `serves`: subjects it answers ($SRV discovery included);
    `events`: what it publishes; `listens`: events it subscribes to."""
    pub = ["$JS.API.INFO", *calls, *events]
    for b in reads:
        pub += kv_read(b)
    for b in writes:
        pub += kv_write(b)
    sub = [inbox_prefix(name) + ".>", *serves, *listens]
    if serves:
        pub.append("_INBOX.>")  # replies to whoever asked
        sub.append("$SRV.>")
    return Permissions(tuple(dict.fromkeys(pub)), tuple(dict.fromkeys(sub)))


def service(kind: str, *, agent_id: str = "") -> Permissions:
    """The permissions of one service instance; a runtime-agent's are bound to its `agent_id`."""
    if kind == s.LAYER_STORE:
        return _principal(kind, serves=["dockyard.layerstore.>"], calls=[s.UPLOAD_COMMITTED],
                          events=[s.EVENT_BLOB_COMMITTED, s.EVENT_BLOB_DELETED])
    if kind == s.REGISTRY_GATEWAY:
        return _principal(kind, serves=["dockyard.registry.>"],
                          calls=["dockyard.layerstore.>", s.GC_STATUS],  # GC_STATUS: the web UI's GC page
                          writes=REGISTRY_META + AUTH_STATE,
                          reads=(s.KV_AGENTS,),  # the web UI's fleet page
                          events=[s.EVENT_IMAGE_PUSHED, s.EVENT_IMAGE_DELETED])
    if kind == s.BUILDER:
        return _principal(kind, serves=["dockyard.builder.>"],
                          calls=[s.REGISTRY_TOKEN, "dockyard.layerstore.>"],
                          writes=(s.KV_BUILD_CACHE, s.KV_BUILD_LEASES), events=[s.EVENT_CACHE_PRUNED],
                          listens=[s.EVENT_CACHE_PRUNED])  # replicas drop what another pruned
    if kind == s.RUNTIME_AGENT:
        if not agent_id:
            raise ValueError("a runtime-agent's permissions name its agent id")
        return _principal(principal(kind, agent_id), serves=[s.agent(agent_id, ">"), f"{FLEET_PREFIX}.>"],
                          calls=[s.REGISTRY_TOKEN,
                                 *kv_write_own(s.KV_CONTAINERS, agent_id)],  # lifecycle: its own records only
                          writes=(s.KV_AGENTS, s.KV_NETWORKS),  # networks: overlay
                          events=[f"{s.EVENT_CONTAINER}.{agent_id}.>"])
    if kind == s.GARBAGE_COLLECTOR:
        return _principal(kind, serves=["dockyard.gc.>"],
                          calls=[s.BLOB_LIST, s.BLOB_DELETE, s.UPLOAD_LIST, s.UPLOAD_ABORT, s.BUILDER_PRUNE,
                                 *_agent_verbs(AGENT_PRUNE_VERB)],
                          writes=(s.KV_GC, *REGISTRY_META), reads=(s.KV_BUILD_CACHE, s.KV_AGENTS),
                          events=[s.EVENT_GC_FINISHED])
    if kind == fleet.SERVICE:
        # the first node's join exchange: it signs credentials itself, so it needs no bus state
        # but the heartbeat of a host it removes, which it forgets
        return _principal(kind, serves=[f"{fleet.PREFIX}.>"], calls=[], reads=(s.KV_AGENTS,),
                          events=[f"$KV.{s.KV_AGENTS}.>"])
    if kind == SUPERVISOR:
        return _principal(kind, serves=[], calls=["$SRV.PING.>", "$SRV.INFO", s.REGISTRY_ENSURE_ADMIN])
    raise ValueError(f"no permissions for service kind {kind!r}")


def node(host: str) -> str:
    """The principal of a joined host's NATS node (its leaf connection to the first node)."""
    return f"node-{host}"


def relay(grants: list[Permissions]) -> Permissions:
    """A joined host's node: what its services may do, and nothing more, crosses its leaf
    connection (each client of the node is held to its own credential there as well)."""
    return Permissions(tuple(dict.fromkeys(x for g in grants for x in g.publish)),
                       tuple(dict.fromkeys(x for g in grants for x in g.subscribe)))


def joiner(token_id: str) -> Permissions:
    """A join token's credential: it can only ask the exchange for the host's own credentials."""
    name = f"joiner-{token_id}"
    return Permissions((fleet.CA, fleet.JOIN), (inbox_prefix(name) + ".>",))


# What each role adds, verb by verb: (verb as the CLI names it, subjects it publishes).
_ROLE_VERBS: dict[str, list[tuple[str, list[str]]]] = {
    "reader": [
        ("ps", [*_agent_verbs(VERB_PS), *kv_read(s.KV_CONTAINERS)]), ("logs", _agent_verbs(VERB_LOGS)),
        ("inspect", _agent_verbs(VERB_INSPECT)), ("images", [s.REGISTRY_IMAGES, *_agent_verbs(VERB_IMAGES)]),
        ("agents", kv_read(s.KV_AGENTS)), ("history", [s.BUILD_HISTORY]),
        # and each state bucket's replication (its stream's config and counts, not its values)
        ("status", ["$SRV.PING", "$SRV.PING.>", "$SRV.INFO", "$SRV.INFO.>",
                    *(f"$JS.API.STREAM.INFO.KV_{b}" for b in STATE_BUCKETS)]),
        # verbs: wait, top, stats, events, diff
        ("wait, top, stats, events, diff", _agent_verbs(*READER_VERBS)),
        # volumes: listing and inspecting a host's volumes
        ("volume ls", _agent_verbs(_vol.VERB_VOLUME_LS)), ("volume inspect", _agent_verbs(_vol.VERB_VOLUME_INSPECT)),
        ("system df", _agent_verbs("df")),  # shared.messages.diskusage.VERB_DF
        ("network ls/inspect", _agent_verbs(net.VERB_NETWORK_LS, net.VERB_NETWORK_INSPECT)),  # networks
    ],
    "operator": [
        ("run", _agent_verbs(VERB_RUN)), ("stop", _agent_verbs(VERB_STOP)), ("start", _agent_verbs(VERB_START)),
        ("kill", _agent_verbs(VERB_KILL)), ("rm", _agent_verbs(VERB_RM)), ("exec", _agent_verbs(AGENT_VERB_EXEC)),
        ("build", [s.BUILD, s.BUILD_CHECK, s.BUILD_IMPORT, s.BUILD_CONTEXT_MISSING, s.REGISTRY_TOKEN]),
        ("push", [s.REGISTRY_COPY]), ("pull", [s.REGISTRY_COPY, *_agent_verbs(VERB_PULL)]),
        ("rmi", [s.REGISTRY_RMI]), ("tag", [s.REGISTRY_TAG, s.REGISTRY_UNTAG]),
        # verbs: restart, rename, pause, unpause, update, cp, export
        ("restart, rename, pause, update, cp, export", _agent_verbs(*OPERATOR_VERBS)),
        # interactive: attach, and the input of an attach or exec session
        ("attach", _agent_verbs(s.AGENT_ATTACH, s.AGENT_STDIN)),
        # volumes: a volume bound to a host device outside the volume roots is refused at the agent
        ("volume create", _agent_verbs(_vol.VERB_VOLUME_CREATE)), ("volume rm", _agent_verbs(_vol.VERB_VOLUME_RM)),
        ("volume prune", _agent_verbs(_vol.VERB_VOLUME_PRUNE)),
        # container/image/system prune: the verbs the GC's agents and build-cache jobs call
        ("container prune", _agent_verbs(AGENT_PRUNE_VERB)), ("builder prune", [s.BUILDER_PRUNE]),
        ("network", _agent_verbs(net.VERB_NETWORK_CREATE, net.VERB_NETWORK_RM, net.VERB_NETWORK_PRUNE,
                                 net.VERB_NETWORK_CONNECT, net.VERB_NETWORK_DISCONNECT)),  # networks
    ],
    "admin": [
        ("user", [s.REGISTRY_USER_ADD, s.REGISTRY_USER_RM, s.REGISTRY_USER_CREDS, s.REGISTRY_ENSURE_ADMIN]),
        ("grant", [s.REGISTRY_GRANT]), ("repo", [s.REGISTRY_REPO_VISIBILITY]),
        ("gc", ["dockyard.gc.>"]), ("fleet", ["dockyard.fleet.>"]),
        # a host bind outside DOCKYARD_AGENT_VOLUME_ROOTS: root on that host, so admins only
        ("run -v HOSTDIR", _agent_verbs(s.AGENT_RUN_HOST_BIND)),
        # runflags: --privileged and its kin give away the host as well
        ("run --privileged", _agent_verbs(s.AGENT_RUN_PRIVILEGED)),
        ("exec --privileged", _agent_verbs(s.AGENT_EXEC_PRIVILEGED)),  # cli11
        # verbs: commit pushes with the agent's registry credential (shared/messages/verbs.py)
        ("commit", _agent_verbs(*ADMIN_VERBS)),
    ],
}


def role(username: str, role_name: str) -> Permissions:
    """A person's permissions: every verb of `role_name` and of the roles below it; events to read."""
    if role_name not in ROLES:
        raise ValueError(f"unknown role {role_name!r}: one of {', '.join(ROLES)}")
    pub = [subj for r in ROLES[:ROLES.index(role_name) + 1] for _, subs in _ROLE_VERBS[r] for subj in subs]
    return Permissions(tuple(dict.fromkeys(pub)), (inbox_prefix(person(username)) + ".>", EVENTS), responses=True)


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    p, t = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(t) > i
        if i >= len(t) or (tok != "*" and tok != t[i]):
            return False
    return len(p) == len(t)


def required_role(subject: str) -> str:
    """The least role whose permissions publish `subject` ("" if no role does)."""
    for r in ROLES:
        if any(matches(p, subject) for _, subs in _ROLE_VERBS[r] for p in subs):
            return r
    return ""
