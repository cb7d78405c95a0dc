"""Named volumes (issue 12): records, `--mount` specs, and the agent's volume verbs.

Volumes are per host: each agent keeps its own under its data dir and answers
`shared.subjects.agent(agent_id, VERB_VOLUME_*)`; `volume ls` is a scatter-gather on
`fleet(VERB_VOLUME_LS)` so that every host's volumes are listed with the host.

This module is imported by the CLI: it imports msgspec and nothing heavy.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

VERB_VOLUME_CREATE = "volume.create"
VERB_VOLUME_LS = "volume.ls"
VERB_VOLUME_INSPECT = "volume.inspect"
VERB_VOLUME_RM = "volume.rm"
VERB_VOLUME_PRUNE = "volume.prune"

# docker's rule for volume names ([a-zA-Z0-9][a-zA-Z0-9_.-]+); a name is never a path
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
ANONYMOUS_LABEL = "com.docker.volume.anonymous"  # docker 23+ marks anonymous volumes so

MountType = Literal["bind", "volume", "tmpfs"]


class VolumeRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One volume as `volume inspect` shows it (and as the agent persists it)."""

    name: str
    host: str  # the agent id
    driver: str = "local"
    mountpoint: str = ""  # the host directory the containers see
    created: str = ""  # RFC 3339
    labels: dict[str, str] = {}
    options: dict[str, str] = {}  # --opt type=, device=, o=
    anonymous: bool = False
    # docker's copy-up: the first container to mount it seeds it with the image's content
    needs_copy_up: bool = True


class Mount(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """`--mount type=volume|bind|tmpfs,source=,target=[,readonly][,volume-nocopy]...` parsed."""

    type: MountType = "volume"
    source: str = ""  # a volume name ("" anonymous) or an absolute host path
    target: str = ""
    readonly: bool = False
    nocopy: bool = False  # volume-nocopy: no copy-up from the image
    labels: dict[str, str] = {}  # volume-label=K=V: for a volume this mount creates
    tmpfs_size: int = 0
    tmpfs_mode: int = 0


class VolumeCreateRequest(msgspec.Struct, kw_only=True):
    name: str = ""  # "" makes an anonymous volume with a random name, as docker does
    driver: str = "local"
    options: dict[str, str] = {}
    labels: dict[str, str] = {}


class VolumeReply(msgspec.Struct, kw_only=True):
    volume: VolumeRecord
    # ids of the containers using it (any state), for `inspect` and refusals
    used_by: list[str] = []
    size: int = -1  # bytes under the mountpoint when asked for (`system df -v`), else -1


class VolumeRef(msgspec.Struct, kw_only=True):
    name: str
    size: bool = False


class VolumeListRequest(msgspec.Struct, kw_only=True):
    # docker's filters: dangling=true|false, label=K or K=V, name=SUBSTRING
    dangling: bool | None = None
    labels: list[str] = []
    name: str = ""
    size: bool = False  # measure each volume (du of its mountpoint)


class VolumeListReply(msgspec.Struct, kw_only=True):
    host: str
    volumes: list[VolumeReply] = []


class VolumeRmRequest(msgspec.Struct, kw_only=True):
    name: str
    force: bool = False  # a missing volume is no error; one in use is still refused


class VolumeRmReply(msgspec.Struct, kw_only=True):
    name: str
    removed: bool = True


class VolumePruneRequest(msgspec.Struct, kw_only=True):
    all: bool = False  # -a: named volumes too, not only anonymous ones (docker 23+)
    labels: list[str] = []
    dry_run: bool = False


class VolumePruneReply(msgspec.Struct, kw_only=True):
    host: str
    removed: list[str] = []
    reclaimed: int = 0  # bytes


def check_name(name: str) -> str:
    from shared.errors import InvalidArgument
    if not NAME_RE.match(name):
        raise InvalidArgument(f"invalid volume name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name


def label_matches(labels: dict[str, str], wanted: list[str]) -> bool:
    """docker's `label=K` (present) and `label=K=V` (equal) filters, all of them."""
    for w in wanted:
        k, eq, v = w.partition("=")
        if k not in labels or (eq and labels[k] != v):
            return False
    return True
