"""Every NATS subject dockyard uses, in one place.

Requests served by a queue group (any replica answers) are `dockyard.<service>.<verb>`;
requests for one host are `dockyard.agent.<agent_id>.<verb>`; events are
`dockyard.events.<topic>`.
"""

from __future__ import annotations

PREFIX = "dockyard"

# Service names as registered with nats.micro ($SRV.PING/INFO/STATS discover them).
LAYER_STORE = "layer-store"
REGISTRY_GATEWAY = "registry-gateway"
BUILDER = "builder"
RUNTIME_AGENT = "runtime-agent"
GARBAGE_COLLECTOR = "garbage-collector"
ALL_SERVICES = (LAYER_STORE, REGISTRY_GATEWAY, BUILDER, RUNTIME_AGENT, GARBAGE_COLLECTOR)

# Queue groups: one per service kind, so replicas share the load.
def queue(service: str) -> str:
    return f"{PREFIX}.{service}"


# layer-store
BLOB_STAT = "dockyard.layerstore.stat"
BLOB_DELETE = "dockyard.layerstore.delete"
BLOB_LIST = "dockyard.layerstore.list"
BLOB_USAGE = "dockyard.layerstore.usage"
BLOB_LOCATE = "dockyard.layerstore.locate"  # where the HTTP data plane listens
UPLOAD_LIST = "dockyard.layerstore.uploads"
UPLOAD_ABORT = "dockyard.layerstore.abort"

# registry-gateway
REGISTRY_INFO = "dockyard.registry.info"
REGISTRY_TOKEN = "dockyard.registry.token"  # service accounts get pull/push tokens over the bus
REGISTRY_IMAGES = "dockyard.registry.images"
REGISTRY_TAG = "dockyard.registry.tag"
REGISTRY_UNTAG = "dockyard.registry.untag"
REGISTRY_RMI = "dockyard.registry.rmi"
REGISTRY_COPY = "dockyard.registry.copy"  # push/pull between the stack registry and another
REGISTRY_USER_ADD = "dockyard.registry.user.add"
REGISTRY_ENSURE_ADMIN = "dockyard.registry.user.ensure-admin"  # `up` on first start
REGISTRY_USER_RM = "dockyard.registry.user.rm"
REGISTRY_USER_CREDS = "dockyard.registry.user.creds"  # a person's bus credentials (admins only)
REGISTRY_GRANT = "dockyard.registry.grant"
REGISTRY_REPO_VISIBILITY = "dockyard.registry.repo.visibility"

# builder
BUILD = "dockyard.builder.build"
BUILD_IMPORT = "dockyard.builder.import"
BUILD_HISTORY = "dockyard.builder.history"
BUILD_CONTEXT_MISSING = "dockyard.builder.context.missing"  # which context blobs must travel
BUILD_CHECK = "dockyard.builder.check"  # `build --check`: the build checks' findings, nothing built

# runtime-agent: fleet-wide and per-host
AGENT_PREFIX = "dockyard.agent"


def agent(agent_id: str, verb: str) -> str:
    return f"{AGENT_PREFIX}.{agent_id}.{verb}"


AGENT_ANY = "dockyard.agent.any"  # queue group of all agents, for fleet-wide questions

# `run` whose -v host paths may lie outside the agent's DOCKYARD_AGENT_VOLUME_ROOTS:
# subjects.agent(agent_id, AGENT_RUN_HOST_BIND). NATS does not tell a subscriber who
# published, so only the admin role's permissions may allow publishing this verb.
AGENT_RUN_HOST_BIND = "run-host-bind"
# runflags: `run`/`create` with --privileged (or a flag as strong: see
# services/runtime_agent/containers/runflags.py), which also may bind any host path: admins only.
AGENT_RUN_PRIVILEGED = "run-privileged"

# garbage-collector
GC_RUN = "dockyard.gc.run"
GC_STATUS = "dockyard.gc.status"
GC_SCHEDULE = "dockyard.gc.schedule"
GC_POLICY = "dockyard.gc.policy"
GC_EXCLUDE = "dockyard.gc.exclude"

# events
EVENT_BLOB_COMMITTED = "dockyard.events.blob.committed"
EVENT_BLOB_DELETED = "dockyard.events.blob.deleted"
EVENT_IMAGE_PUSHED = "dockyard.events.image.pushed"
EVENT_IMAGE_DELETED = "dockyard.events.image.deleted"
EVENT_GC_FINISHED = "dockyard.events.gc.finished"
EVENT_CONTAINER = "dockyard.events.container"  # .<agent_id>.<state>

# JetStream key-value buckets (state several replicas share)
KV_REPOSITORIES = "dockyard-repositories"
KV_TAGS = "dockyard-tags"
KV_MANIFESTS = "dockyard-manifests"
KV_REFERRERS = "dockyard-referrers"
KV_USERS = "dockyard-users"
KV_ACL = "dockyard-acl"
KV_UPLOADS = "dockyard-uploads"
KV_BUILD_CACHE = "dockyard-build-cache"
KV_AGENTS = "dockyard-agents"
KV_GC = "dockyard-gc"
KV_LEASES = "dockyard-leases"
KV_BLOB_LINKS = "dockyard-blob-links"
BUILDER_PRUNE = "dockyard.builder.prune"
UPLOAD_COMMITTED = "dockyard.registry.upload.committed"
KV_BUILD_LEASES = "dockyard-build-leases"
KV_NETWORKS = "dockyard-networks"  # networks: overlay networks and their addresses, fleet-wide
EVENT_CACHE_PRUNED = "dockyard.events.builder.cache-pruned"
KV_CONTAINERS = "dockyard-containers"  # lifecycle: each agent's container records, for `ps` of a gone agent

# interactive (services/runtime_agent/interactive): subjects.agent(agent_id, VERB) for each;
# the frames of a session go to the inbox its client names (shared/messages/interactive.py)
AGENT_ATTACH = "attach"  # a new session on a container's stdio
AGENT_EXEC = "exec"  # a process in a running container (attached unless -d)
# cli11: `exec --privileged` (every capability the agent has, whatever the container's): admins only
AGENT_EXEC_PRIVILEGED = "exec-privileged"
AGENT_STDIN = "stdin"  # a session's input: stdin bytes (as requests), acks, resizes, close
