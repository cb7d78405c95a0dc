"""Contexts, like docker's: a name for a stack (its data dir, or a NATS URL and registry) the CLI
talks to, kept in `~/.config/dockyard/contexts.json` (or under `$XDG_CONFIG_HOME`).

Which stack a command reaches, first match wins:
  1. `--context NAME`;
  2. `--nats`/`--data-dir`, or `DOCKYARD_NATS_URL`/`DOCKYARD_DATA_DIR`: the `default` context
     with those settings;
  3. `DOCKYARD_CONTEXT`;
  4. the context `dockyard context use` chose;
  5. `default`: the default data dir.
A context's data dir supplies, through its `stack.json`, whatever the context does not pin
(the NATS URL and registry address `dockyard up` actually got).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from shared import config, stackfile
from shared.errors import InvalidArgument, NotFound
from shared.fsutil import write_atomic

DEFAULT = "default"


class Context(msgspec.Struct, kw_only=True, omit_defaults=True):
    data_dir: str = ""
    nats_url: str = ""
    registry: str = ""  # HOST:PORT
    description: str = ""


class ContextFile(msgspec.Struct, kw_only=True, omit_defaults=True):
    current: str = ""
    contexts: dict[str, Context] = {}


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dockyard"


def _path() -> Path:
    return config_dir() / "contexts.json"


def load_file() -> ContextFile:
    try:
        data = _path().read_bytes()
    except FileNotFoundError:
        return ContextFile()
    except OSError as e:
        raise InvalidArgument(f"cannot read {_path()}: {e.strerror}") from e
    try:
        return msgspec.json.decode(data, type=ContextFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InvalidArgument(f"{_path()} is not a contexts file: {e}") from e


def save_file(f: ContextFile) -> None:
    _path().parent.mkdir(parents=True, exist_ok=True)
    write_atomic(_path(), msgspec.json.format(msgspec.json.encode(f)) + b"\n")


def selected(flag: str | None, *, explicit: bool, current: str) -> str:
    """The context name a command uses (the module docstring's order); `explicit`: --nats/--data-dir given."""
    if flag:
        if explicit:
            raise InvalidArgument("--context conflicts with --nats/--data-dir: give one or the other")
        return flag
    if explicit or os.environ.get("DOCKYARD_NATS_URL") or os.environ.get("DOCKYARD_DATA_DIR"):
        return DEFAULT
    return os.environ.get("DOCKYARD_CONTEXT") or current or DEFAULT


def settings(name: str, f: ContextFile, *, nats_url: str | None = None,
             data_dir: str | None = None) -> config.Config:
    """The configuration of context `name`: its pinned values, then its data dir's running stack.

    A data dir named on purpose (flag, env, context) with no stack running leaves the NATS
    URL empty rather than the default: a command must not reach whatever else listens there.
    """
    if name == DEFAULT:
        cfg = config.load(nats_url=nats_url, data_dir=data_dir)
        chosen = bool(data_dir or os.environ.get("DOCKYARD_DATA_DIR"))
        stack = stackfile.read(cfg.data_path)
        if stack is None and (not chosen or nats_url or os.environ.get("DOCKYARD_NATS_URL")):
            return cfg
        # flags and DOCKYARD_* env still win over what the stack recorded
        return config.load(under=_recorded(stack), nats_url=nats_url, data_dir=data_dir)
    c = f.contexts.get(name)
    if c is None:
        raise NotFound(f"context {name!r} does not exist (see `dockyard context ls`)")
    pinned = {k: v for k, v in (("data_dir", c.data_dir), ("nats_url", c.nats_url), ("registry_addr", c.registry))
              if v}
    recorded = _recorded(stackfile.read(Path(c.data_dir))) if c.data_dir else {}
    # a named context wins over the environment, as docker's --context does
    return config.load(**{**recorded, **pinned})


def _recorded(stack: stackfile.StackInfo | None) -> dict[str, str]:
    return stack.addresses() if stack else {"nats_url": ""}


def resolve(*, context: str | None, nats_url: str | None, data_dir: str | None) -> tuple[str, config.Config]:
    """The context a command talks to and its configuration."""
    f = load_file()
    name = selected(context, explicit=bool(nats_url or data_dir), current=f.current)
    return name, settings(name, f, nats_url=nats_url, data_dir=data_dir)
