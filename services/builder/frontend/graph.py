"""Build args in the global scope, stage references, and the stages a target needs."""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass, field

from shared.errors import InvalidArgument
from services.builder.frontend import instructions as ins
from services.builder.frontend.shell import expand_or_raise

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def host_platform() -> tuple[str, str]:
    m = _platform.machine()
    return "linux", _ARCH.get(m, m)


def builtin_args(os_: str | None = None, arch: str | None = None) -> dict[str, str]:
    """The platform ARGs BuildKit predefines in the global scope."""
    hos, harch = host_platform()
    os_, arch = os_ or hos, arch or harch
    return {"BUILDPLATFORM": f"{hos}/{harch}", "BUILDOS": hos, "BUILDARCH": harch, "BUILDVARIANT": "",
            "TARGETPLATFORM": f"{os_}/{arch}", "TARGETOS": os_, "TARGETARCH": arch, "TARGETVARIANT": ""}


@dataclass
class BuildArgs:
    """`--build-arg` values and the global scope they meet; tracks which were consumed."""

    given: dict[str, str]
    builtins: dict[str, str] = field(default_factory=builtin_args)
    global_scope: dict[str, str] = field(default_factory=dict)
    consumed: set[str] = field(default_factory=set)

    def evaluate_meta(self, df: ins.Dockerfile) -> None:
        scope = dict(self.builtins)
        for arg in df.meta_args:
            for name, default in arg.pairs:
                if name in self.given:
                    scope[name] = self.given[name]
                    self.consumed.add(name)
                elif default is not None:
                    scope[name] = expand_or_raise(default, scope, df.escape, arg.src.where("ARG"))
                self.global_scope[name] = scope.get(name, "")
        self._scope = scope

    @property
    def from_scope(self) -> dict[str, str]:
        """What `FROM` may expand: builtins and global ARGs."""
        return dict(self._scope)

    def unused(self) -> list[str]:
        return sorted(set(self.given) - self.consumed)


@dataclass(frozen=True)
class StageBase:
    stage: int | None  # FROM <earlier stage>
    image: str | None  # FROM <image ref>; "scratch" has neither


def stage_index(df: ins.Dockerfile, ref: str, current: int, where: str) -> int | None:
    """An earlier stage named or numbered by `ref`, or None if `ref` is an image."""
    low = ref.lower()
    for st in df.stages[:current]:
        if st.name == low:
            return st.index
    if ref.isdigit():
        n = int(ref)
        if n >= current:
            raise InvalidArgument(f"{where}: invalid stage index {n}: it must refer to an earlier stage")
        return n
    for st in df.stages[current:]:
        if st.name == low:
            raise InvalidArgument(f"{where}: stage {ref!r} is defined after it is used")
    return None


def stage_base(df: ins.Dockerfile, stage: ins.Stage, args: BuildArgs) -> StageBase:
    where = stage.source.src.where("FROM")
    image = expand_or_raise(stage.source.image, args.from_scope, df.escape, where)
    if not image:
        raise InvalidArgument(f"{where}: base name ({stage.source.image}) should not be blank")
    if image.lower() == "scratch":
        return StageBase(None, None)
    idx = stage_index(df, image, stage.index, where)
    return StageBase(idx, None) if idx is not None else StageBase(None, image)


def copy_from_ref(df: ins.Dockerfile, copy: ins.Copy, current: int, args: BuildArgs) -> tuple[int | None, str | None]:
    where = copy.src.where(copy.name)
    ref = expand_or_raise(copy.from_ or "", args.from_scope, df.escape, where)
    if not ref:
        raise InvalidArgument(f"{where}: --from needs a stage name, index or image")
    idx = stage_index(df, ref, current, where)
    return (idx, None) if idx is not None else (None, ref)


def mount_from_ref(df: ins.Dockerfile, ref: str, current: int, where: str) -> tuple[int | None, str | None]:
    """A RUN mount's `from`: a stage or an image (BuildKit expands no variable there)."""
    idx = stage_index(df, ref, current, where)
    return (idx, None) if idx is not None else (None, ref)


def target_stage(df: ins.Dockerfile, target: str | None) -> int:
    if not target:
        return len(df.stages) - 1
    for st in df.stages:
        if st.name == target.lower():
            return st.index
    raise InvalidArgument(f"{df.file}: target stage {target!r} could not be found")


def needed_stages(df: ins.Dockerfile, target: int, args: BuildArgs) -> list[int]:
    """The stages `target` depends on (by FROM or COPY --from), in build order."""
    needed: set[int] = set()
    todo = [target]
    while todo:
        i = todo.pop()
        if i in needed:
            continue
        needed.add(i)
        st = df.stages[i]
        base = stage_base(df, st, args)
        if base.stage is not None:
            todo.append(base.stage)
        todo.extend(stage_deps(df, st, args))
    return sorted(needed)


def stage_deps(df: ins.Dockerfile, st: ins.Stage, args: BuildArgs) -> set[int]:
    """The earlier stages `st` reads by COPY --from or RUN --mount from= (not its FROM)."""
    refs: list[int | None] = []
    for instr in st.instructions:
        if isinstance(instr, ins.Copy) and instr.from_:
            refs.append(copy_from_ref(df, instr, st.index, args)[0])
        elif isinstance(instr, ins.Run):
            refs += [mount_from_ref(df, m.from_, st.index, instr.src.where("RUN"))[0]
                     for m in instr.mounts if m.from_]
    return {i for i in refs if i is not None}
