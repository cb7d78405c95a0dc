"""Instruction flags (`--from=x`, `--link`, `--mount=...`), checked like BuildKit's BFlags."""

from __future__ import annotations

import posixpath
import re

from shared.errors import InvalidArgument
from services.builder.frontend.instructions import SecretMount

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


def parse_mounts(values: list[str], where: str) -> tuple[SecretMount, ...]:
    """`RUN --mount=...`: secrets are supported; other types are refused by name."""
    out: list[SecretMount] = []
    for value in values:
        fields: dict[str, str] = {}
        for part in value.split(","):
            key, eq, v = part.partition("=")
            key = key.strip().lower()
            fields[key] = v.strip() if eq else "true"
        mtype = fields.pop("type", "bind")
        if mtype != "secret":
            raise InvalidArgument(f"{where}: RUN --mount=type={mtype} is not supported (only type=secret)")
        sid = fields.pop("id", "") or (posixpath.basename(fields.get("target", fields.get("dst", ""))))
        if not sid:
            raise InvalidArgument(f"{where}: secret mount needs an id or a target")
        target = fields.pop("target", None) or fields.pop("dst", None) or fields.pop("destination", None)
        target = target or f"/run/secrets/{sid}"
        if not target.startswith("/"):
            target = "/" + target
        try:
            mode = int(fields.pop("mode", "0400"), 8)
            uid = int(fields.pop("uid", "0"))
            gid = int(fields.pop("gid", "0"))
        except ValueError as exc:
            raise InvalidArgument(f"{where}: bad secret mount option: {exc}") from exc
        required = fields.pop("required", "false").lower() == "true"
        if fields:
            raise InvalidArgument(f"{where}: unexpected key {sorted(fields)[0]!r} in secret mount")
        out.append(SecretMount(id=sid, target=posixpath.normpath(target), required=required,
                               mode=mode, uid=uid, gid=gid))
    return tuple(out)
