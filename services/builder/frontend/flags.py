"""Instruction flags (`--from=x`, `--link`, `--mount=...`), checked like BuildKit's BFlags."""

from __future__ import annotations

import posixpath
import re

from shared.errors import InvalidArgument
from services.builder.frontend.instructions import RunMount, SecretMount

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000}


class Flags:
    """The flags of one instruction; any flag left unread is an error ("unknown flag")."""

    def __init__(self, raw: tuple[str, ...], where: str):
        self.where = where
        self._values: dict[str, list[str | None]] = {}
        for f in raw:
            if not f.startswith("--"):
                raise InvalidArgument(f"{where}: bad flag {f!r}")
            name, eq, value = f[2:].partition("=")
            self._values.setdefault(name.lower(), []).append(value if eq else None)
        self._used: set[str] = set()

    def _take(self, name: str) -> list[str | None]:
        self._used.add(name)
        return self._values.get(name, [])

    def string(self, name: str) -> str | None:
        vals = self._take(name)
        if not vals:
            return None
        if len(vals) > 1:
            raise InvalidArgument(f"{self.where}: duplicate flag specified: --{name}")
        if vals[0] is None:
            raise InvalidArgument(f"{self.where}: missing a value on flag: --{name}")
        return vals[0]

    def strings(self, name: str) -> list[str]:
        out = []
        for v in self._take(name):
            if v is None:
                raise InvalidArgument(f"{self.where}: missing a value on flag: --{name}")
            out.append(v)
        return out

    def bool(self, name: str) -> bool:
        vals = self._take(name)
        if not vals:
            return False
        v = vals[-1]
        if v is None or v.lower() == "true":
            return True
        if v.lower() == "false":
            return False
        raise InvalidArgument(f"{self.where}: expecting boolean value for flag --{name}, not: {v}")

    def check_all_used(self) -> None:
        unknown = sorted(set(self._values) - self._used)
        if unknown:
            raise InvalidArgument(f"{self.where}: unknown flag: --{unknown[0]}")


def parse_duration(text: str | None, where: str, flag: str) -> int:
    """A Go duration (`30s`, `1m30s`, `250ms`) in nanoseconds; docker wants 0 or >= 1ms."""
    if not text:
        return 0
    if text == "0":
        return 0
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise InvalidArgument(f"{where}: --{flag}: invalid duration {text!r}")
    ns = int(total)
    if 0 < ns < 1_000_000:
        raise InvalidArgument(f"{where}: interval \"{flag}\" cannot be less than 1ms")
    return ns


_MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_SHARING = ("shared", "private", "locked")
_MOUNT_KEYS = {"type", "from", "source", "src", "target", "dst", "destination", "readonly", "ro", "readwrite",
               "rw", "id", "sharing", "required", "size", "mode", "uid", "gid", "env"}
_RAM_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?$", re.I)


def _ram_bytes(text: str, where: str) -> int:
    """docker's units.RAMInBytes: `64m`, `1g`, `512kb` (binary multiples)."""
    m = _RAM_RE.match(text.strip())
    if not m:
        raise InvalidArgument(f"{where}: invalid value for size: {text}")
    power = "kmgtp".find(m.group(2).lower()) + 1 if m.group(2) else 0
    return int(float(m.group(1)) * 1024 ** power)


def _bool(key: str, value: str, where: str) -> bool:
    low = value.lower()
    if low in ("1", "t", "true"):
        return True
    if low in ("0", "f", "false"):
        return False
    raise InvalidArgument(f"{where}: invalid value for {key}: {value}")


def _number(key: str, value: str, where: str, base: int = 10) -> int:
    try:
        n = int(value, base)
    except ValueError:
        raise InvalidArgument(f"{where}: invalid value {value} for {key}") from None
    if n < 0 or n > 0xFFFFFFFF:
        raise InvalidArgument(f"{where}: invalid value {value} for {key}")
    return n


def parse_mounts(values: list[str], where: str) -> tuple[tuple[SecretMount, ...], tuple[RunMount, ...]]:
    """`RUN --mount=...` values: (secrets, other mounts), checked as BuildKit's parseMount does."""
    secrets: list[SecretMount] = []
    mounts: list[RunMount] = []
    for value in values:
        mtype = "bind"
        text: dict[str, str] = {}  # from, source, target, id, env
        num: dict[str, int] = {}  # mode, uid, gid, size
        ro: bool | None = None
        sharing: str | None = None
        required = False
        for part in value.split(","):
            key, eq, v = part.partition("=")
            key, v = key.strip().lower(), v.strip()
            if not eq:
                if key in ("readonly", "ro", "readwrite", "rw"):
                    ro = key in ("readonly", "ro")
                elif key == "required" and mtype in ("secret", "ssh"):
                    required = True
                elif key == "required":
                    raise InvalidArgument(f"{where}: unexpected key 'required' for mount type '{mtype}'")
                else:
                    raise InvalidArgument(f"{where}: invalid field '{part}' must be a key=value pair")
                continue
            if key not in _MOUNT_KEYS:
                raise InvalidArgument(f"{where}: unexpected key '{key}' in '{part}'")
            if key == "type":
                if v.lower() not in _MOUNT_TYPES:
                    raise InvalidArgument(f"{where}: unsupported mount type {v!r}")
                mtype = v.lower()
            elif key in ("readonly", "ro"):
                ro = _bool(key, v, where)
            elif key in ("readwrite", "rw"):
                ro = not _bool(key, v, where)
            elif key == "required":
                if mtype not in ("secret", "ssh"):
                    raise InvalidArgument(f"{where}: unexpected key 'required' for mount type '{mtype}'")
                required = _bool(key, v, where)
            elif key == "size":
                if mtype != "tmpfs":
                    raise InvalidArgument(f"{where}: unexpected key 'size' for mount type '{mtype}'")
                num["size"] = _ram_bytes(v, where)
            elif key == "sharing":
                if v.lower() not in _SHARING:
                    raise InvalidArgument(f"{where}: unsupported sharing value {v!r}")
                sharing = v.lower()
            elif key == "mode":
                num["mode"] = _number(key, v, where, 8)
            elif key in ("uid", "gid"):
                num[key] = _number(key, v, where)
            else:
                text[{"src": "source", "dst": "target", "destination": "target"}.get(key, key)] = v
        if mtype not in ("secret", "ssh", "cache"):
            for bad in ("mode", "uid", "gid"):
                if bad in num:
                    raise InvalidArgument(f"{where}: {bad} not allowed for \"{mtype}\" type mounts")
        if sharing is not None and mtype != "cache":
            raise InvalidArgument(f"{where}: invalid cache sharing set for {mtype} mount")
        if "env" in text and mtype != "secret":
            raise InvalidArgument(f"{where}: unexpected key 'env' for mount type '{mtype}'")
        if mtype == "secret":
            secrets.append(_secret(text, num, required, where))
            continue
        target = text.get("target") or ("/run/buildkit/ssh_agent.0" if mtype == "ssh" else "")
        if not target:
            raise InvalidArgument(f"{where}: mount type={mtype} needs a target")
        mounts.append(RunMount(
            type=mtype, target=target, id=text.get("id", "default" if mtype == "ssh" else ""),
            from_=text.get("from"), source=text.get("source", ""),
            readonly=ro if ro is not None else mtype not in ("cache", "tmpfs"), sharing=sharing or "shared",
            mode=num.get("mode"), uid=num.get("uid"), gid=num.get("gid"), size=num.get("size", 0),
            required=required))
    return tuple(secrets), tuple(mounts)


def _secret(text: dict[str, str], num: dict[str, int], required: bool, where: str) -> SecretMount:
    if "from" in text:
        raise InvalidArgument(f"{where}: secret mount should not have a from")
    if "source" in text and "id" in text:
        raise InvalidArgument(f"{where}: both source and id can't be set")
    target = text.get("target", "")
    sid = text.get("id") or text.get("source") or posixpath.basename(target)
    if not sid:
        raise InvalidArgument(f"{where}: invalid secret mount. one of source, target required")
    env = text.get("env", "")
    if not target and not env:
        target = f"/run/secrets/{sid}"
    if target and not target.startswith("/"):
        target = "/" + target
    return SecretMount(id=sid, target=posixpath.normpath(target) if target else "", required=required,
                       mode=num.get("mode", 0o400), uid=num.get("uid", 0), gid=num.get("gid", 0), env=env)
