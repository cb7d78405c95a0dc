"""What a stage asks the executor to do, with every word already expanded.

A plan is a list of steps; each is either a filesystem step (RUN, COPY/ADD,
WORKDIR's mkdir) that may produce a layer, or a config-only step (ENV, LABEL,
...) that only adds a history entry. `cache_text` is what the cache key hashes
for the step, besides its parent chain and the content it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.builder.frontend.imagestate import ImageState
from services.builder.frontend.instructions import SecretMount, Source
from services.builder.frontend.lint import Lint


@dataclass(frozen=True)
class Step:
    src: Source
    created_by: str  # the history entry's text

    @property
    def cache_text(self) -> str:
        return self.created_by


@dataclass(frozen=True)
class ConfigStep(Step):
    """Changes the image config only: never a layer."""


@dataclass(frozen=True)
class Mount:
    """A RUN mount (bind, cache, tmpfs, ssh) with its words expanded and its `from` resolved."""

    type: str
    target: str  # absolute
    id: str = ""  # cache: the cache's name (default: the target); ssh: the agent's id
    from_stage: int | None = None
    from_image: str | None = None
    source: str = "/"  # the path in `from` (or in the context, for a bind)
    readonly: bool = False
    sharing: str = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int = 0
    required: bool = False

    @property
    def key_text(self) -> str:
        return (f"{self.type}:{self.target}:{self.id}:{self.from_stage}|{self.from_image}:{self.source}:"
                f"{self.readonly}:{self.sharing}:{self.mode}:{self.uid}:{self.gid}:{self.size}")


@dataclass(frozen=True)
class RunStep(Step):
    argv: tuple[str, ...]
    env: tuple[str, ...]  # ENV and the stage's ARGs, `K=V`
    workdir: str
    user: str
    network: str
    secrets: tuple[SecretMount, ...] = ()
    mounts: tuple[Mount, ...] = ()
    security: str = "sandbox"

    @property
    def cache_text(self) -> str:
        # Secret ids, never contents: a changed secret does not rerun the step,
        # as with BuildKit. A cache mount's contents never enter the key either.
        return "\0".join(["RUN", *self.argv, "env", *self.env, "cwd", self.workdir, "user", self.user,
                          "net", self.network, "secrets", *(f"{s.id}:{s.target}:{s.env}" for s in self.secrets),
                          "mounts", *(m.key_text for m in self.mounts), "security", self.security])


@dataclass(frozen=True)
class InlineSource:
    name: str
    content: bytes


@dataclass(frozen=True)
class CopyStep(Step):
    sources: tuple[str, ...]
    dest: str  # absolute; a trailing `/` means "into this directory"
    from_stage: int | None  # index of the stage to copy from
    from_image: str | None  # an image reference to copy from
    chown: str | None
    chmod: int | None
    is_add: bool
    workdir: str
    inline: tuple[InlineSource, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "ADD" if self.is_add else "COPY"

    @property
    def from_context(self) -> bool:
        return self.from_stage is None and self.from_image is None

    @property
    def cache_text(self) -> str:
        return "\0".join([self.created_by, f"from={self.from_stage}|{self.from_image}",
                          f"chown={self.chown}", f"chmod={self.chmod}",
                          *(f"inline:{i.name}:{len(i.content)}" for i in self.inline)])


@dataclass(frozen=True)
class WorkdirStep(Step):
    """WORKDIR creates its directory when it is missing (a layer only then)."""

    path: str
    user: str


@dataclass
class StagePlan:
    index: int
    name: str | None
    base: str  # "scratch", an image reference, or "stage:<index>"
    steps: list[Step] = field(default_factory=list)
    config: ImageState = field(default_factory=ImageState)
    used_args: set[str] = field(default_factory=set)
    lints: list[Lint] = field(default_factory=list)  # what the dispatch-time checks found
