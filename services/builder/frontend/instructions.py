"""Typed Dockerfile instructions, as parsed (words not yet expanded).

Expansion of `$VAR` needs the build state (ENV, ARG, the base image's env), so
it happens in `dispatch`; these values keep the raw words and where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.builder.frontend.lint import Lint


@dataclass(frozen=True)
class Source:
    """Where an instruction is: for error messages and history."""

    file: str
    line: int
    end_line: int
    original: str

    def where(self, cmd: str) -> str:
        return f"{self.file}:{self.line}: {cmd}"


@dataclass(frozen=True)
class Instruction:
    src: Source

    @property
    def name(self) -> str:
        return type(self).__name__.upper()


@dataclass(frozen=True)
class InlineFile:
    """A heredoc used as a COPY/ADD source or a RUN script."""

    name: str
    content: str
    expand: bool  # `<<EOF` expands variables, `<<"EOF"` / `<<'EOF'` does not


@dataclass(frozen=True)
class From(Instruction):
    image: str
    stage_name: str | None
    platform: str | None


@dataclass(frozen=True)
class SecretMount:
    id: str
    target: str  # absolute path in the container; "" when the secret is only an env var
    required: bool = False
    mode: int = 0o400
    uid: int = 0
    gid: int = 0
    env: str = ""  # also (or only) the value of this variable in the step


@dataclass(frozen=True)
class RunMount:
    """A `RUN --mount` of type bind, cache, tmpfs or ssh, as written (BuildKit's field names)."""

    type: str
    target: str  # a relative one is against the step's WORKDIR
    id: str = ""  # cache: defaults to the target; ssh: defaults to "default"
    from_: str | None = None  # bind/cache: a stage or an image (bind's default: the context)
    source: str = ""  # bind/cache: the path in `from_`
    readonly: bool = False
    sharing: str = "shared"  # cache: shared | private | locked
    mode: int | None = None  # cache and ssh
    uid: int | None = None
    gid: int | None = None
    size: int = 0  # tmpfs: bytes, 0 for the default
    required: bool = False  # ssh


@dataclass(frozen=True)
class Run(Instruction):
    shell_form: str | None  # the command line for the shell, or None in exec form
    exec_form: tuple[str, ...] | None
    secrets: tuple[SecretMount, ...] = ()
    network: str = "default"  # default | none | host
    heredocs: tuple[InlineFile, ...] = ()
    mounts: tuple[RunMount, ...] = ()
    security: str = "sandbox"  # sandbox | insecure


@dataclass(frozen=True)
class Copy(Instruction):
    sources: tuple[str, ...]
    dest: str
    from_: str | None = None
    chown: str | None = None
    chmod: str | None = None
    is_add: bool = False
    link: bool = False
    exclude: tuple[str, ...] = ()
    inline: tuple[InlineFile, ...] = ()

    @property
    def name(self) -> str:
        return "ADD" if self.is_add else "COPY"


@dataclass(frozen=True)
class Env(Instruction):
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Arg(Instruction):
    pairs: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class Label(Instruction):
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Maintainer(Instruction):
    author: str


@dataclass(frozen=True)
class Workdir(Instruction):
    path: str


@dataclass(frozen=True)
class User(Instruction):
    user: str


@dataclass(frozen=True)
class Expose(Instruction):
    ports: tuple[str, ...]


@dataclass(frozen=True)
class Volume(Instruction):
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Entrypoint(Instruction):
    shell_form: str | None
    exec_form: tuple[str, ...] | None


@dataclass(frozen=True)
class Cmd(Instruction):
    shell_form: str | None
    exec_form: tuple[str, ...] | None


@dataclass(frozen=True)
class Shell(Instruction):
    argv: tuple[str, ...]


@dataclass(frozen=True)
class StopSignal(Instruction):
    signal: str


@dataclass(frozen=True)
class Healthcheck(Instruction):
    """`test` is None for `HEALTHCHECK NONE`; durations are in nanoseconds."""

    test: tuple[str, ...] | None
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True)
class Onbuild(Instruction):
    expression: str


@dataclass
class Stage:
    """One `FROM ...` and the instructions up to the next FROM."""

    index: int
    source: From
    instructions: list[Instruction] = field(default_factory=list)

    @property
    def name(self) -> str | None:
        return self.source.stage_name


@dataclass
class Dockerfile:
    file: str
    escape: str
    meta_args: list[Arg]  # ARGs before the first FROM: the global scope
    stages: list[Stage]
    lints: list[Lint] = field(default_factory=list)  # what the parse-time checks found
