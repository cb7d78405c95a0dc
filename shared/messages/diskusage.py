"""`system df` (issue 12): one host's disk use by images, containers and volumes.

Sizes are bytes allocated on disk (what `du` counts, hard links once), so that the
figures can be checked against `du` of the same directories.
"""

from __future__ import annotations

import msgspec

VERB_DF = "df"  # per host: shared.subjects.agent(agent_id, VERB_DF); fleet(VERB_DF) for every host


class DfRequest(msgspec.Struct, kw_only=True):
    verbose: bool = False  # one row per image, container and volume as well as the totals


class DfEntry(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    size: int = 0  # bytes; an image's: all its layers
    shared: int = 0  # an image's layers other images use too
    active: bool = False  # used by a container (a container: running)


class DfKind(msgspec.Struct, kw_only=True, frozen=True):
    total: int = 0  # how many
    active: int = 0
    size: int = 0  # bytes on disk, each layer once
    reclaimable: int = 0  # bytes a prune would free
    entries: list[DfEntry] = []  # with `verbose`


class DfReply(msgspec.Struct, kw_only=True):
    host: str
    images: DfKind = DfKind()
    containers: DfKind = DfKind()
    volumes: DfKind = DfKind()
    # the directories measured, so a check (or a person) can run `du` on the same data
    paths: dict[str, list[str]] = {}
