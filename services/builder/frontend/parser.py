"""Dockerfile text to typed instructions, with BuildKit's own grammar.

The `dockerfile` package is BuildKit's parser compiled from Go, so line
continuations, JSON vs shell form, flags, heredocs and the escape directive
parse exactly as docker parses them. This module checks what BuildKit's
`instructions.Parse` checks (argument counts, known flags, JSON-only forms) and
names the file, line and instruction on every error.
"""

from __future__ import annotations

import re

import dockerfile

from shared.errors import InvalidArgument
from services.builder.frontend import instructions as ins
from services.builder.frontend.flags import Flags, parse_duration, parse_mounts
from services.builder.frontend.lint import parse_checks

_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC_RE = re.compile(r"^<<(-?)(['\"]?)([^'\"]+)\2$")


def _escape_directive(text: str) -> str:
    """The `# escape=` parser directive (only in the leading comment block)."""
    for line in text.splitlines():
        m = _DIRECTIVE_RE.match(line)
        if not m:
            break
        if m.group(1).lower() == "escape":
            return m.group(2)
    return "\\"


def _locate_parse_error(text: str) -> int:
    """The line a GoParseError is about: the parser does not say, so bisect prefixes."""
    lines = text.splitlines(keepends=True)
    for n in range(1, len(lines) + 1):
        try:
            dockerfile.parse_string("".join(lines[:n]))
        except dockerfile.GoParseError:
            return n
    return len(lines)


def parse(text: str, file: str = "Dockerfile") -> ins.Dockerfile:
    """Parse a Dockerfile into its global ARGs and stages."""
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        line = _locate_parse_error(text)
        raise InvalidArgument(f"{file}:{line}: {exc}") from exc
    escape = _escape_directive(text)
    meta_args: list[ins.Arg] = []
    stages: list[ins.Stage] = []
    lints = []
    for c in commands:
        lints += parse_checks(c.cmd, c.value, file, c.start_line)
        instr = _convert(c, file, escape)
        if isinstance(instr, ins.From):
            stages.append(ins.Stage(index=len(stages), source=instr))
        elif not stages:
            if not isinstance(instr, ins.Arg):
                raise InvalidArgument(
                    f"{instr.src.where(c.cmd.upper())}: no build stage in current context "
                    "(only ARG may come before the first FROM)")
            meta_args.append(instr)
        else:
            stages[-1].instructions.append(instr)
    if not stages:
        raise InvalidArgument(f"{file}: the Dockerfile has no FROM instruction")
    seen: dict[str, int] = {}
    for st in stages:
        if st.name:
            if st.name in seen:
                raise InvalidArgument(f"{st.source.src.where('FROM')}: duplicate stage name {st.name!r}")
            seen[st.name] = st.index
    return ins.Dockerfile(file=file, escape=escape, meta_args=meta_args, stages=stages, lints=lints)


def _convert(c: dockerfile.Command, file: str, escape: str, src: ins.Source | None = None) -> ins.Instruction:
    cmd = c.cmd.upper()
    src = src or ins.Source(file=file, line=c.start_line, end_line=c.end_line, original=c.original)
    where = src.where(cmd)
    fn = _CONVERTERS.get(cmd)
    if fn is None:
        raise InvalidArgument(f"{where}: unknown instruction: {c.cmd}")
    flags = Flags(c.flags, where)
    instr = fn(c, src, flags, where)
    flags.check_all_used()
    return instr


def _need(c: dockerfile.Command, where: str, n: int | None = None, at_least: int = 0) -> None:
    if n is not None and len(c.value) != n:
        raise InvalidArgument(f"{where}: requires exactly {n} argument(s), got {len(c.value)}")
    if len(c.value) < at_least:
        raise InvalidArgument(f"{where}: requires at least {at_least} argument(s)")


def _from(c, src, flags, where) -> ins.From:
    platform = flags.string("platform")
    v = c.value
    if len(v) == 3 and v[1].lower() == "as":
        name = v[2].lower()
        if not re.fullmatch(r"[a-z][a-z0-9-_.]*", name):
            raise InvalidArgument(f"{where}: invalid name for build stage: {v[2]!r}")
        return ins.From(src, image=v[0], stage_name=name, platform=platform)
    if len(v) != 1:
        raise InvalidArgument(f"{where}: FROM requires either one or three arguments")
    return ins.From(src, image=v[0], stage_name=None, platform=platform)


def _heredoc_files(c: dockerfile.Command) -> dict[str, ins.InlineFile]:
    out = {}
    for token in c.value:
        m = _HEREDOC_RE.match(token)
        if not m:
            continue
        name = m.group(3)
        doc = next((h for h in c.heredocs if h.name == name), None)
        if doc is not None:
            out[token] = ins.InlineFile(name=name, content=doc.content, expand=not m.group(2))
    return out


def _run(c, src, flags, where) -> ins.Run:
    secrets, mounts = parse_mounts(flags.strings("mount"), where)
    network = flags.string("network") or "default"
    if network not in ("default", "none", "host"):
        raise InvalidArgument(f"{where}: unsupported network mode {network!r}")
    security = (flags.string("security") or "sandbox").lower()
    if security not in ("sandbox", "insecure"):
        raise InvalidArgument(f"{where}: unsupported security mode {security!r}")
    extra = dict(secrets=secrets, mounts=mounts, network=network, security=security)
    if c.json:
        return ins.Run(src, shell_form=None, exec_form=tuple(c.value), **extra)
    _need(c, where, at_least=1)
    line = c.value[0]
    docs = tuple(ins.InlineFile(h.name, h.content, True) for h in c.heredocs)
    if docs:
        if len(docs) == 1 and _HEREDOC_RE.match(line.strip()):
            line = docs[0].content  # `RUN <<EOF` runs the document as the script
        else:
            line = line + "\n" + "".join(d.content + d.name + "\n" for d in docs)
    return ins.Run(src, shell_form=line, exec_form=None, heredocs=docs, **extra)


def _copy(c, src, flags, where, is_add: bool = False) -> ins.Copy:
    cmd = "ADD" if is_add else "COPY"
    if len(c.value) < 2:
        raise InvalidArgument(f"{where}: {cmd} requires at least two arguments, but only one was provided. Destination could not be determined")
    inline = _heredoc_files(c)
    sources = tuple(v for v in c.value[:-1] if v not in inline)
    copy = ins.Copy(
        src,
        sources=sources,
        dest=c.value[-1],
        from_=None if is_add else flags.string("from"),
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        is_add=is_add,
        link=flags.bool("link"),
        exclude=tuple(flags.strings("exclude")),
        inline=tuple(inline.values()),
    )
    if is_add:
        flags.string("checksum")
        flags.bool("keep-git-dir")
        for s in sources:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s) or s.startswith("git@"):
                raise InvalidArgument(
                    f"{where}: ADD of a remote URL ({s}) is not supported: this builder has no "
                    "network access; download the file into the context and COPY it")
    return copy


def _pairs(c, where: str, cmd: str) -> tuple[tuple[str, str], ...]:
    v = c.value
    if not v or len(v) % 2:
        raise InvalidArgument(f"{where}: {cmd} requires at least one argument")
    pairs = tuple((v[i], v[i + 1]) for i in range(0, len(v), 2))
    for k, _ in pairs:
        if not k:
            raise InvalidArgument(f"{where}: {cmd} names cannot be empty")
    return pairs


def _env(c, src, flags, where) -> ins.Env:
    return ins.Env(src, pairs=_pairs(c, where, "ENV"))


def _label(c, src, flags, where) -> ins.Label:
    return ins.Label(src, pairs=_pairs(c, where, "LABEL"))


def _arg(c, src, flags, where) -> ins.Arg:
    _need(c, where, at_least=1)
    pairs: list[tuple[str, str | None]] = []
    for token in c.value:
        name, eq, default = token.partition("=")
        if not name:
            raise InvalidArgument(f"{where}: ARG names cannot be empty")
        pairs.append((name, default if eq else None))
    return ins.Arg(src, pairs=tuple(pairs))


def _one(c, where: str, cmd: str) -> str:
    if len(c.value) != 1:
        raise InvalidArgument(f"{where}: {cmd} requires exactly one argument")
    return c.value[0]


def _forms(c, where: str) -> tuple[str | None, tuple[str, ...] | None]:
    if c.json:
        return None, tuple(c.value)
    return (" ".join(c.value), None) if c.value else ("", None)


def _entrypoint(c, src, flags, where) -> ins.Entrypoint:
    sh, ex = _forms(c, where)
    return ins.Entrypoint(src, shell_form=sh, exec_form=ex)


def _cmd(c, src, flags, where) -> ins.Cmd:
    sh, ex = _forms(c, where)
    return ins.Cmd(src, shell_form=sh, exec_form=ex)


def _shell(c, src, flags, where) -> ins.Shell:
    if not c.json:
        raise InvalidArgument(f"{where}: SHELL requires the arguments to be in JSON form")
    if not c.value:
        raise InvalidArgument(f"{where}: SHELL requires at least one argument")
    return ins.Shell(src, argv=tuple(c.value))


def _healthcheck(c, src, flags, where) -> ins.Healthcheck:
    kind = c.value[0].upper() if c.value else ""
    if kind == "NONE":
        if len(c.value) != 1:
            raise InvalidArgument(f"{where}: HEALTHCHECK NONE takes no arguments")
        return ins.Healthcheck(src, test=None)
    if kind != "CMD" or len(c.value) < 2:
        raise InvalidArgument(f"{where}: HEALTHCHECK requires CMD <command> or NONE")
    test = ("CMD", *c.value[1:]) if c.json else ("CMD-SHELL", " ".join(c.value[1:]))
    durations = {k: parse_duration(flags.string(k), where, k)
                 for k in ("interval", "timeout", "start-period", "start-interval")}
    retries_text = flags.string("retries")
    try:
        retries = int(retries_text) if retries_text else 0
    except ValueError as exc:
        raise InvalidArgument(f"{where}: --retries must be an integer") from exc
    if retries < 0:
        raise InvalidArgument(f"{where}: --retries cannot be negative ({retries})")
    return ins.Healthcheck(src, test=test, interval=durations["interval"], timeout=durations["timeout"],
                           start_period=durations["start-period"],
                           start_interval=durations["start-interval"], retries=retries)


def _refuse_trigger(cmd: str, where: str) -> None:
    """The instructions docker never lets a trigger be (checked when written and when run)."""
    if cmd == "ONBUILD":
        raise InvalidArgument(f"{where}: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if cmd in ("FROM", "MAINTAINER"):
        raise InvalidArgument(f"{where}: {cmd} isn't allowed as an ONBUILD trigger")


def _onbuild(c, src, flags, where) -> ins.Onbuild:
    sub = (c.sub_cmd or "").upper()
    if not sub:
        raise InvalidArgument(f"{where}: ONBUILD requires an instruction")
    _refuse_trigger(sub, where)
    return ins.Onbuild(src, expression=c.original.split(None, 1)[1].strip())


def parse_triggers(triggers: list[str], origin: str) -> list[ins.Instruction]:
    """A base image's ONBUILD triggers as instructions, parsed with the same grammar.

    Each trigger is its own one-instruction document (as BuildKit's
    `initOnBuildTriggers` parses it), so a config written by another tool is
    checked as strictly as our own ONBUILD lines. `origin` names the base image in
    errors; a trigger's "line" is its position in the base's OnBuild list.
    """
    out: list[ins.Instruction] = []
    for n, text in enumerate(triggers, start=1):
        file = f"{origin} ONBUILD trigger"
        try:
            commands = dockerfile.parse_string(text)
        except dockerfile.GoParseError as exc:
            raise InvalidArgument(f"{file}:{n}: {exc}") from exc
        if len(commands) != 1:
            raise InvalidArgument(f"{file}:{n}: an ONBUILD trigger must be a single instruction: {text!r}")
        c = commands[0]
        src = ins.Source(file=file, line=n, end_line=n, original=c.original)
        _refuse_trigger(c.cmd.upper(), src.where("ONBUILD"))
        out.append(_convert(c, file, "\\", src))
    return out


_CONVERTERS = {
    "FROM": _from,
    "RUN": _run,
    "COPY": _copy,
    "ADD": lambda c, s, f, w: _copy(c, s, f, w, is_add=True),
    "ENV": _env,
    "ARG": _arg,
    "LABEL": _label,
    "MAINTAINER": lambda c, s, f, w: ins.Maintainer(s, author=_one(c, w, "MAINTAINER")),
    "WORKDIR": lambda c, s, f, w: ins.Workdir(s, path=_one(c, w, "WORKDIR")),
    "USER": lambda c, s, f, w: ins.User(s, user=_one(c, w, "USER")),
    "EXPOSE": lambda c, s, f, w: (_need(c, w, at_least=1), ins.Expose(s, ports=tuple(c.value)))[1],
    "VOLUME": lambda c, s, f, w: (_need(c, w, at_least=1), ins.Volume(s, paths=tuple(c.value)))[1],
    "ENTRYPOINT": _entrypoint,
    "CMD": _cmd,
    "SHELL": _shell,
    "STOPSIGNAL": lambda c, s, f, w: ins.StopSignal(s, signal=_one(c, w, "STOPSIGNAL")),
    "HEALTHCHECK": _healthcheck,
    "ONBUILD": _onbuild,
}
