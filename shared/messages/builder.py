"""builder requests and replies (`dockyard.builder.build|import|history`).

Blob bytes never ride the bus: the CLI uploads the build context (or the rootfs
tarball of an import) to the stack's registry as a blob of `CONTEXT_REPOSITORY`
and names it by digest here. New fields get defaults (schema evolution).
"""

from __future__ import annotations

import msgspec

from shared.messages.common import Inbox
from shared.oci.digest import Digest

# Where the CLI uploads contexts and import tarballs (a repository of the stack registry).
CONTEXT_REPOSITORY = "dockyard/build-contexts"
# Where builders push the layers of intermediate stages, for other replicas to hit.
CACHE_REPOSITORY = "dockyard/build-cache"
# Which context blobs the stack registry lacks: lets the CLI skip its HTTP client
# (and the upload) when a rebuild sends nothing new. Any replica answers.


class SecretRef(msgspec.Struct, kw_only=True, frozen=True):
    """A `--secret id=X`: its bytes travel in the request only, never to a blob or a layer."""

    id: str
    data: bytes = b""


class BuildRequest(msgspec.Struct, kw_only=True):
    context: Digest  # the context tar, a blob of CONTEXT_REPOSITORY
    dockerfile: str  # the Dockerfile text (it may live outside the context, like `-f ../x`)
    dockerfile_name: str = "Dockerfile"
    dockerfile_path: str = "Dockerfile"  # its path in the context, "" if outside (an ignored one is not copied)
    tags: list[str] = []
    build_args: dict[str, str] = {}
    target: str = ""
    no_cache: bool = False
    secrets: list[SecretRef] = []
    compression: str = "gzip"  # gzip | zstd
    network: str = "default"  # default (none) | host: the default for RUN steps
    labels: dict[str, str] = {}
    progress_inbox: Inbox = ""
    no_cache_filter: list[str] = []  # stages (names or indexes) that must not use the cache
    cache_from: list[str] = []  # `type=registry,ref=REPO:TAG` (a cache artifact, or an image's inline cache)
    cache_to: list[str] = []  # `type=registry,ref=REPO:TAG,mode=min|max` or `type=inline`


class ContextMissingRequest(msgspec.Struct, kw_only=True):
    digests: list[Digest]  # blobs of CONTEXT_REPOSITORY the caller means to name


class ContextMissingReply(msgspec.Struct, kw_only=True):
    missing: list[Digest]  # those the stack registry does not hold, in request order


class BuildWarning(msgspec.Struct, kw_only=True, frozen=True):
    kind: str  # secret | wasted-bytes | unused-build-arg | lint
    message: str
    layer: int = -1  # index in the manifest's layers
    path: str = ""
    size: int = 0
    rule: str = ""  # lint: BuildKit's rule name (StageNameCasing, ...), its page, and where
    url: str = ""
    file: str = ""
    line: int = 0


class StepReport(msgspec.Struct, kw_only=True, frozen=True):
    stage: int
    instruction: str
    cached: bool
    layer: Digest | None = None
    size: int = 0
    seconds: float = 0.0


class BuildReply(msgspec.Struct, kw_only=True):
    digest: Digest  # the image manifest
    config_digest: Digest
    tags: list[str] = []
    size: int = 0  # compressed bytes of all layers
    media_type: str = ""  # of the manifest
    manifest_size: int = 0
    warnings: list[BuildWarning] = []
    steps: list[StepReport] = []


class CheckReply(msgspec.Struct, kw_only=True):
    """`build --check` (a BuildRequest on BUILD_CHECK): what the build checks found, nothing built."""

    warnings: list[BuildWarning] = []


class ImportRequest(msgspec.Struct, kw_only=True):
    """`dockyard import ROOTFS.tar NAME:TAG`: a one-layer base image from a tarball."""

    source: Digest  # the tarball, a blob of CONTEXT_REPOSITORY (plain, gzip or zstd)
    tag: str
    changes: list[str] = []  # Dockerfile config instructions, like `docker import --change`
    message: str = ""
    compression: str = "gzip"
    progress_inbox: Inbox = ""


class ImportReply(msgspec.Struct, kw_only=True):
    digest: Digest
    config_digest: Digest
    tag: str
    size: int = 0


class HistoryRequest(msgspec.Struct, kw_only=True):
    image: str


class HistoryEntry(msgspec.Struct, kw_only=True, frozen=True):
    created: str = ""
    created_by: str = ""
    comment: str = ""
    empty_layer: bool = False
    layer: Digest | None = None
    size: int = 0  # uncompressed bytes the layer adds
    wasted: int = 0  # bytes of earlier layers this layer hides (deleted or overwritten)


class HistoryReply(msgspec.Struct, kw_only=True):
    image: str
    digest: Digest
    entries: list[HistoryEntry] = []


# ---- build-cache pruning (the verb itself, `dockyard.builder.prune`, and its Structs are the
# garbage-collector's: shared.messages.gc.BUILDER_PRUNE, PruneRequest, PruneReply) ----------

# Leases of running builds: one key per build, listing the cache keys it has used so far.
# The bucket's TTL expires the lease of a builder that died; a live build renews it.
# Published after a prune removed records, so every replica drops its local copies too.


class BuildLease(msgspec.Struct, kw_only=True):
    builder: str = ""
    started_at: float = 0.0
    keys: list[str] = []  # build-cache keys (step chain digests) this build has looked up or written


class CachePruned(msgspec.Struct, kw_only=True):
    layers: list[Digest] = []  # blobs no cache record references any more
    diff_ids: list[str] = []  # diff_ids[i]: the uncompressed digest of layers[i] (a snapshot's name), or ""
