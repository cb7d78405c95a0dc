"""A stage's instructions, evaluated in order against its state, into a plan of steps.

This is the semantic half of the frontend (BuildKit's `dispatch`): ARG scoping,
ENV/ARG substitution where docker does it, WORKDIR resolution, the shell form
wrapped in SHELL, ENTRYPOINT resetting CMD, EXPOSE/VOLUME/HEALTHCHECK into the
config. It needs the base image's config but touches no filesystem.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re

from shared.errors import InvalidArgument
from shared.buildcontext import PatternMatcher
from services.builder.frontend import instructions as ins
from services.builder.frontend import lint
from services.builder.frontend import steps as st
from services.builder.frontend.graph import BuildArgs, copy_from_ref, mount_from_ref, stage_base
from services.builder.frontend.imagestate import ImageState
from services.builder.frontend.parser import parse_triggers
from services.builder.frontend.shell import expand_or_raise, expand_words

_PORT_RE = re.compile(r"^(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?$", re.I)
_SIGNAL_RE = re.compile(r"^(SIG)?[A-Z0-9+-]+$")


class _Recorder(dict):
    """A scope that remembers the names looked up and not found (for UndefinedVar)."""

    def __init__(self, scope: dict[str, str]):
        super().__init__(scope)
        self.missing: set[str] = set()

    def get(self, key, default=None):
        if key not in self:
            self.missing.add(key)
        return super().get(key, default)


class _StageState:
    def __init__(self, df: ins.Dockerfile, stage: ins.Stage, base: ImageState, args: BuildArgs,
                 ignore: PatternMatcher | None):
        self.df, self.stage, self.args = df, stage, args
        self.cfg = base.clone()
        self.cfg.onbuild = []  # the base's triggers run in this stage; only its own ONBUILD lines stay
        self.stage_args: dict[str, str] = {}  # ARGs declared in this stage that have a value
        self.declared: set[str] = set()  # every ARG this stage declared so far
        self.cmd_set = False
        self.ignore = ignore  # the context's .dockerignore, for CopyIgnoredFile
        self.lints: list[lint.Lint] = []
        self.line = stage.source.src.line  # of the instruction being dispatched

    def scope(self) -> dict[str, str]:
        """Variables for expansion: this stage's ARGs, overridden by ENV (docker's precedence)."""
        return {**self.stage_args, **self.cfg.env}

    def expand(self, word: str, where: str) -> str:
        scope = _Recorder(self.scope())
        out = expand_or_raise(word, scope, self.df.escape, where)
        for name in sorted(scope.missing - self.declared):
            self.warn(lint.undefined_var(name, list(scope), self.df.file, self.line))
        return out

    def warn(self, found: lint.Lint | None) -> None:
        if found is not None and found not in self.lints:
            self.lints.append(found)

    def run_env(self) -> tuple[str, ...]:
        env = dict(self.cfg.env)
        for k, v in self.stage_args.items():
            env.setdefault(k, v)
        return tuple(f"{k}={v}" for k, v in env.items())

    def abs_path(self, path: str) -> str:
        trailing = path.endswith("/") or path.endswith("/.")
        joined = posixpath.normpath(posixpath.join(self.cfg.workdir or "/", path))
        if joined.startswith("//"):
            joined = "/" + joined.lstrip("/")
        return joined + "/" if trailing and joined != "/" else joined


def dispatch_stage(df: ins.Dockerfile, stage: ins.Stage, base: ImageState, args: BuildArgs,
                   ignore: PatternMatcher | None = None) -> st.StagePlan:
    """Evaluate `stage` over `base` into a plan and the resulting image config (`ignore`: for the checks)."""
    base_ref = stage_base(df, stage, args)
    base_text = (f"stage:{base_ref.stage}" if base_ref.stage is not None
                 else base_ref.image if base_ref.image else "scratch")
    plan = st.StagePlan(index=stage.index, name=stage.name, base=base_text)
    # docker runs the base's ONBUILD triggers right after FROM, as if written
    # there; _StageState then drops them so the child does not inherit them.
    triggers = parse_triggers(base.onbuild, base_text) if base.onbuild else []
    s = _StageState(df, stage, base, args, ignore)
    for instr in [*triggers, *stage.instructions]:
        s.line = instr.src.line
        step = _HANDLERS[type(instr)](s, instr)
        if step is not None:
            plan.steps.append(step)
    plan.config = s.cfg
    plan.lints = s.lints
    return plan


def _arg(s: _StageState, i: ins.Arg) -> st.Step:
    shown = []
    for name, default in i.pairs:
        a = s.args
        if name in a.given:
            value: str | None = a.given[name]
            a.consumed.add(name)
        elif default is not None:
            value = s.expand(default, i.src.where("ARG"))
        elif name in a.global_scope:
            value = a.global_scope[name]
        elif name in a.builtins:
            value = a.builtins[name]
        else:
            value = None
        s.warn(lint.secret_key("ARG", name, s.df.file, s.line))
        s.declared.add(name)
        if value is not None:
            s.stage_args[name] = value
            shown.append(f"{name}={value}")
        else:
            shown.append(name)
    return st.ConfigStep(i.src, created_by="ARG " + " ".join(shown))


def _env(s: _StageState, i: ins.Env) -> st.Step:
    where = i.src.where("ENV")
    shown = []
    for k, v in i.pairs:
        key = s.expand(k, where)
        val = s.expand(v, where)
        s.warn(lint.secret_key("ENV", key, s.df.file, s.line))
        s.cfg.env[key] = val
        shown.append(f"{key}={val}")
    return st.ConfigStep(i.src, created_by="ENV " + " ".join(shown))


def _label(s: _StageState, i: ins.Label) -> st.Step:
    where = i.src.where("LABEL")
    shown = []
    for k, v in i.pairs:
        key, val = s.expand(k, where), s.expand(v, where)
        s.cfg.labels[key] = val
        shown.append(f"{key}={val}")
    return st.ConfigStep(i.src, created_by="LABEL " + " ".join(shown))


def _maintainer(s: _StageState, i: ins.Maintainer) -> st.Step:
    s.cfg.author = i.author
    return st.ConfigStep(i.src, created_by=f"MAINTAINER {i.author}")


def _workdir(s: _StageState, i: ins.Workdir) -> st.Step:
    path = s.expand(i.path, i.src.where("WORKDIR"))
    if not path:
        raise InvalidArgument(f"{i.src.where('WORKDIR')}: WORKDIR cannot be empty")
    s.cfg.workdir = s.abs_path(path).rstrip("/") or "/"
    return st.WorkdirStep(i.src, created_by=f"WORKDIR {s.cfg.workdir}", path=s.cfg.workdir, user=s.cfg.user)


def _user(s: _StageState, i: ins.User) -> st.Step:
    s.cfg.user = s.expand(i.user, i.src.where("USER"))
    return st.ConfigStep(i.src, created_by=f"USER {s.cfg.user}")


def _expose(s: _StageState, i: ins.Expose) -> st.Step:
    where = i.src.where("EXPOSE")
    ports = []
    for raw in i.ports:
        for word in expand_words(raw, s.scope(), s.df.escape):
            m = _PORT_RE.match(word)
            if not m:
                raise InvalidArgument(f"{where}: invalid containerPort: {word}")
            lo = int(m.group(1))
            hi = int(m.group(2) or lo)
            proto = (m.group(3) or "tcp").lower()
            if hi < lo or hi > 65535:
                raise InvalidArgument(f"{where}: invalid port range: {word}")
            for p in range(lo, hi + 1):
                key = f"{p}/{proto}"
                s.cfg.exposed_ports[key] = {}
                ports.append(key)
    return st.ConfigStep(i.src, created_by="EXPOSE " + " ".join(ports))


def _volume(s: _StageState, i: ins.Volume) -> st.Step:
    where = i.src.where("VOLUME")
    paths = []
    for raw in i.paths:
        v = s.expand(raw, where).strip()
        if not v:
            raise InvalidArgument(f"{where}: VOLUME specified can not be an empty string")
        s.cfg.volumes[v] = {}
        paths.append(v)
    return st.ConfigStep(i.src, created_by="VOLUME " + str(paths).replace("'", '"'))


def _argv(s: _StageState, shell_form: str | None, exec_form: tuple[str, ...] | None) -> list[str]:
    if exec_form is not None:
        return list(exec_form)
    return [*s.cfg.shell_argv, shell_form or ""]


def _json(v: list[str]) -> str:
    return json.dumps(v)


def _json_args_check(s: _StageState, name: str, shell_form: str | None) -> None:
    if shell_form is not None and not s.cfg.shell:
        s.warn(lint.json_args(name, s.df.file, s.line))


def _entrypoint(s: _StageState, i: ins.Entrypoint) -> st.Step:
    _json_args_check(s, "ENTRYPOINT", i.shell_form)
    s.cfg.entrypoint = _argv(s, i.shell_form, i.exec_form)
    if not s.cmd_set:
        s.cfg.cmd = None  # docker: a new ENTRYPOINT drops an inherited CMD
    return st.ConfigStep(i.src, created_by=f"ENTRYPOINT {_json(s.cfg.entrypoint)}")


def _cmd(s: _StageState, i: ins.Cmd) -> st.Step:
    _json_args_check(s, "CMD", i.shell_form)
    s.cfg.cmd = _argv(s, i.shell_form, i.exec_form)
    s.cmd_set = True
    return st.ConfigStep(i.src, created_by=f"CMD {_json(s.cfg.cmd)}")


def _shell(s: _StageState, i: ins.Shell) -> st.Step:
    s.cfg.shell = list(i.argv)
    return st.ConfigStep(i.src, created_by=f"SHELL {_json(s.cfg.shell)}")


def _stopsignal(s: _StageState, i: ins.StopSignal) -> st.Step:
    where = i.src.where("STOPSIGNAL")
    sig = s.expand(i.signal, where)
    if not _SIGNAL_RE.match(sig):
        raise InvalidArgument(f"{where}: invalid signal: {sig}")
    s.cfg.stop_signal = sig
    return st.ConfigStep(i.src, created_by=f"STOPSIGNAL {sig}")


def _healthcheck(s: _StageState, i: ins.Healthcheck) -> st.Step:
    if i.test is None:
        s.cfg.healthcheck = {"Test": ["NONE"]}
    else:
        hc: dict = {"Test": list(i.test)}
        for key, val in (("Interval", i.interval), ("Timeout", i.timeout), ("StartPeriod", i.start_period),
                         ("StartInterval", i.start_interval), ("Retries", i.retries)):
            if val:
                hc[key] = val
        s.cfg.healthcheck = hc
    return st.ConfigStep(i.src, created_by=f"HEALTHCHECK {_json(s.cfg.healthcheck['Test'])}")


def _onbuild(s: _StageState, i: ins.Onbuild) -> st.Step:
    s.cfg.onbuild.append(i.expression)
    return st.ConfigStep(i.src, created_by=f"ONBUILD {i.expression}")


def _run(s: _StageState, i: ins.Run) -> st.Step:
    argv = _argv(s, i.shell_form, i.exec_form)
    shown = " ".join(argv)
    used_args = [f"{k}={v}" for k, v in s.stage_args.items() if k not in s.cfg.env]
    prefix = f"|{len(used_args)} {' '.join(used_args)} " if used_args else ""
    where = i.src.where("RUN")
    secrets = tuple(dataclasses.replace(m, id=s.expand(m.id, where), target=s.expand(m.target, where),
                                        env=s.expand(m.env, where)) for m in i.secrets)
    return st.RunStep(i.src, created_by=f"RUN {prefix}{shown} # buildkit", argv=tuple(argv),
                      env=s.run_env(), workdir=s.cfg.workdir or "/", user=s.cfg.user,
                      network=i.network, secrets=secrets, mounts=tuple(_mount(s, m, where) for m in i.mounts),
                      security=i.security)


def _mount(s: _StageState, m: ins.RunMount, where: str) -> st.Mount:
    """A RUN mount as BuildKit's dispatchRunMounts makes it: words expanded, target absolute."""
    target = s.abs_path(s.expand(m.target, where)).rstrip("/") or "/"
    if target == "/":
        raise InvalidArgument(f"{where}: invalid mount target {m.target!r}")
    from_stage, from_image = mount_from_ref(s.df, m.from_, s.stage.index, where) if m.from_ else (None, None)
    mid = s.expand(m.id, where)
    if m.type == "cache" and not mid:
        mid = target
    return st.Mount(type=m.type, target=target, id=mid, from_stage=from_stage, from_image=from_image,
                    source=posixpath.normpath("/" + s.expand(m.source, where).lstrip("/")), readonly=m.readonly,
                    sharing=m.sharing, mode=m.mode, uid=m.uid, gid=m.gid, size=m.size, required=m.required)


def _copy(s: _StageState, i: ins.Copy) -> st.Step:
    where = i.src.where(i.name)
    sources = tuple(s.expand(x, where) for x in i.sources)
    dest_raw = s.expand(i.dest, where)
    dest = s.abs_path(dest_raw)
    if dest_raw.endswith("/") and not dest.endswith("/"):
        dest += "/"
    n_sources = len(sources) + len(i.inline)
    if n_sources > 1 and not dest.endswith("/"):
        raise InvalidArgument(f"{where}: When using {i.name} with more than one source file, "
                              "the destination must be a directory and end with a /")
    from_stage, from_image = (copy_from_ref(s.df, i, s.stage.index, s.args) if i.from_ else (None, None))
    if not i.from_:
        for src in sources:
            s.warn(lint.copy_ignored(i.name, src, s.ignore, s.df.file, s.line))
    chmod = None
    if i.chmod:
        text = s.expand(i.chmod, where)
        try:
            chmod = int(text, 8)
        except ValueError as exc:
            raise InvalidArgument(f"{where}: invalid --chmod={text}: only octal modes are supported") from exc
        if chmod > 0o7777:
            raise InvalidArgument(f"{where}: invalid --chmod={text}")
    chown = s.expand(i.chown, where) if i.chown else None
    inline = tuple(st.InlineSource(f.name, (s.expand(f.content, where) if f.expand else f.content).encode())
                   for f in i.inline)
    flags = "".join([f"--from={i.from_} " if i.from_ else "", f"--chown={chown} " if chown else "",
                     f"--chmod={i.chmod} " if i.chmod else ""])
    shown = " ".join([*sources, *(f"<<{f.name}" for f in i.inline), dest_raw])
    return st.CopyStep(i.src, created_by=f"{i.name} {flags}{shown} # buildkit", sources=sources, dest=dest,
                       from_stage=from_stage, from_image=from_image, chown=chown, chmod=chmod,
                       is_add=i.is_add, workdir=s.cfg.workdir or "/", inline=inline,
                       exclude=tuple(s.expand(x, where) for x in i.exclude))


_HANDLERS = {
    ins.Arg: _arg, ins.Env: _env, ins.Label: _label, ins.Maintainer: _maintainer, ins.Workdir: _workdir,
    ins.User: _user, ins.Expose: _expose, ins.Volume: _volume, ins.Entrypoint: _entrypoint, ins.Cmd: _cmd,
    ins.Shell: _shell, ins.StopSignal: _stopsignal, ins.Healthcheck: _healthcheck, ins.Onbuild: _onbuild,
    ins.Run: _run, ins.Copy: _copy,
}
