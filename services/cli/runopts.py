"""`run`/`create` flags of issue 11, parsed into typed values at the edge (shared.messages.runflags).

`add_arguments` declares them on a parser; `apply` folds the parsed arguments into a
RunRequest. Files named by a flag (--env-file, --security-opt seccomp=FILE) are read here,
on the client, as docker does: the agent may be on another host.
"""

from __future__ import annotations

import os
import re
from typing import Any

_DURATION = r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)"  # compiled on use: `dockyard ps` imports this module
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _bad(message: str) -> Exception:
    from shared.errors import InvalidArgument  # not at import: `dockyard ps` loads this module too
    return InvalidArgument(message)


def add_arguments(p: Any) -> None:
    p.add_argument("--cpus", type=float, help="number of CPUs (CFS quota), e.g. 1.5")
    p.add_argument("--pids-limit", type=int, help="the most processes at once (-1 unlimited)")
    p.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]")
    p.add_argument("-P", "--publish-all", action="store_true", help="publish every EXPOSEd port on a free port")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE")
    p.add_argument("--read-only", action="store_true", help="mount the root filesystem read-only")
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTS]")
    p.add_argument("--init", action="store_true", help="run tini as pid 1: forwards signals, reaps zombies")
    p.add_argument("--add-host", action="append", default=[], metavar="NAME:IP")
    p.add_argument("--dns", action="append", default=[], metavar="IP")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP")
    p.add_argument("--security-opt", action="append", default=[],
                   metavar="no-new-privileges|seccomp=FILE|seccomp=unconfined")
    p.add_argument("--privileged", action="store_true", help="every capability and device (admin role only)")
    p.add_argument("--stop-signal", help="the signal `stop` sends (default: the image's, else SIGTERM)")
    p.add_argument("--stop-timeout", type=int, help="seconds `stop` waits before KILL (default 10)")
    p.add_argument("--health-cmd", help="command whose exit code says healthy (0) or not")
    p.add_argument("--health-interval", help="time between checks (e.g. 30s)")
    p.add_argument("--health-timeout", help="time one check may take")
    p.add_argument("--health-start-period", help="failures in this time after the start do not count")
    p.add_argument("--health-retries", type=int, help="failures in a row that make it unhealthy")
    p.add_argument("--no-healthcheck", action="store_true", help="disable the image's HEALTHCHECK")


def apply(req, args) -> Any:
    """`req` (a RunRequest) with the flags of `args` in it."""
    import msgspec

    from shared.messages.runflags import RunFlags, Tmpfs
    nnp, seccomp = security_opts(args.security_opt)
    flags = RunFlags(
        cpus=_positive(args.cpus, "--cpus") if args.cpus is not None else 0.0,
        pids_limit=_pids(args.pids_limit), ulimits=[parse_ulimit(u) for u in args.ulimit],
        publish_all=args.publish_all, read_only=args.read_only,
        tmpfs=[Tmpfs(path=t.partition(":")[0], options=[o for o in t.partition(":")[2].split(",") if o])
               for t in args.tmpfs],
        init=args.init, add_hosts=[parse_add_host(h) for h in args.add_host], dns=list(args.dns),
        cap_add=list(args.cap_add), cap_drop=list(args.cap_drop), no_new_privileges=nnp,
        seccomp_profile=seccomp, privileged=args.privileged, stop_signal=args.stop_signal or "",
        stop_timeout=float(args.stop_timeout) if args.stop_timeout is not None else None, health=health(args))
    env = [e for f in args.env_file for e in read_env_file(f)] + list(req.env)
    return msgspec.structs.replace(req, flags=flags, env=env, create_only=getattr(args, "create_only", False))


def _positive(value: float, flag: str) -> float:
    if value <= 0:
        raise _bad(f"invalid {flag} {value}: must be positive")
    return value


def _pids(value: int | None) -> int:
    if value is None or value == 0:
        return 0
    return -1 if value < 0 else value  # docker: any negative number means unlimited


def parse_ulimit(text: str):
    """`nofile=1024:2048`, `nproc=512` (soft = hard), `-1` unlimited."""
    from shared.messages.runflags import Ulimit
    from shared.runtime.spec_flags import ULIMIT_NAMES
    name, eq, values = text.partition("=")
    if not eq or name not in ULIMIT_NAMES:
        raise _bad(f"invalid ulimit {text!r}: NAME=SOFT[:HARD] with NAME one of "
                              + ", ".join(sorted(ULIMIT_NAMES)))
    soft_text, _, hard_text = values.partition(":")
    try:
        soft = int(soft_text)
        hard = int(hard_text) if hard_text else soft
    except ValueError:
        raise _bad(f"invalid ulimit {text!r}: limits are numbers") from None
    if hard >= 0 and (soft < 0 or soft > hard):
        raise _bad(f"invalid ulimit {text!r}: soft limit must be less than or equal to hard limit")
    return Ulimit(name=name, soft=soft, hard=hard)


def parse_add_host(text: str):
    """`NAME:IP` (or docker's newer `NAME=IP`); IPv6 addresses keep their colons."""
    import ipaddress

    from shared.messages.runflags import HostEntry
    sep = "=" if "=" in text else ":"
    name, _, ip = text.partition(sep)
    if ip == "host-gateway":
        raise _bad("--add-host NAME:host-gateway is not supported: give the address")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise _bad(f"invalid --add-host {text!r}: NAME:IP") from None
    if not name or any(c.isspace() for c in name):
        raise _bad(f"invalid --add-host {text!r}: no host name")
    return HostEntry(name=name, ip=ip)


def security_opts(opts: list[str]) -> tuple[bool, str]:
    """(no-new-privileges, seccomp profile JSON or "unconfined") of the --security-opt values."""
    nnp, seccomp = False, ""
    for o in opts:
        key, sep, value = o.replace(":", "=", 1).partition("=") if o.startswith("no-new") else o.partition("=")
        if key == "no-new-privileges":
            if value not in ("", "true", "false"):
                raise _bad(f"invalid --security-opt {o!r}: no-new-privileges[:true|false]")
            nnp = value != "false"
        elif key == "seccomp" and sep:
            seccomp = "unconfined" if value == "unconfined" else _read(value, "--security-opt seccomp")
        else:
            raise _bad(f"unsupported --security-opt {o!r}: no-new-privileges, seccomp=FILE "
                                  "or seccomp=unconfined (apparmor and label need an LSM this host does not run)")
    return nnp, seccomp


def health(args):
    """The --health-* flags as a Health, None when none is given (the image's applies)."""
    from shared.messages.runflags import Health
    given = [args.health_cmd, args.health_interval, args.health_timeout, args.health_start_period,
             args.health_retries]
    if args.no_healthcheck:
        if any(v is not None for v in given):
            raise _bad("--no-healthcheck conflicts with --health-* options")
        return Health(test=["NONE"])
    if all(v is None for v in given):
        return None
    if args.health_retries is not None and args.health_retries < 0:
        raise _bad("--health-retries cannot be negative")
    return Health(test=["CMD-SHELL", args.health_cmd] if args.health_cmd else [],
                  interval=_duration(args.health_interval, "--health-interval"),
                  timeout=_duration(args.health_timeout, "--health-timeout"),
                  start_period=_duration(args.health_start_period, "--health-start-period"),
                  retries=args.health_retries or 0)


def _duration(text: str | None, flag: str) -> float:
    """A Go duration (`30s`, `1m30s`, `500ms`) in seconds; a bare number is seconds."""
    if text is None:
        return 0.0
    t = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(_DURATION, t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise _bad(f"invalid {flag} {text!r}: a duration such as 30s, 1m30s or 500ms")
    seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if 0 < seconds < 0.001:
        raise _bad(f"invalid {flag} {text!r}: at least 1ms")
    return seconds


def read_env_file(path: str) -> list[str]:
    """docker's --env-file: NAME=VALUE lines, a bare NAME taken from our environment, # comments."""
    out = []
    for n, raw in enumerate(_read(path, "--env-file").splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        name, eq, _ = line.partition("=")
        if not name or any(c.isspace() for c in name):
            raise _bad(f"{path}:{n}: variable {name!r} contains whitespaces")
        if eq:
            out.append(line)
        elif name in os.environ:
            out.append(f"{name}={os.environ[name]}")
    return out


def _read(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise _bad(f"{flag} {path}: {e.strerror}") from None
