"""One host's named volumes on disk, docker's local driver layout.

    <root>/<name>/record.json   the VolumeRecord (labels, options, copy-up state)
    <root>/<name>/_data/        what containers mount (the mountpoint)

`--opt type=tmpfs` mounts a tmpfs on `_data` when a container first needs it;
`--opt type=none,o=bind,device=DIR` bind-mounts DIR there, DIR confined to the agent's
DOCKYARD_AGENT_VOLUME_ROOTS like any host bind. Such a mount stays until the volume is
removed (docker unmounts a tmpfs volume when its last container stops; its data
lives a little longer here, never less).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import msgspec

from services.runtime_agent.fsutil import read_record, write_record
from shared.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from shared.messages.agent import VOLUME_OUTSIDE_ROOTS
from shared.messages.volumes import ANONYMOUS_LABEL, VolumeRecord, check_name
from shared.runtime.jsonlog import rfc3339nano

_OPTION_KEYS = ("type", "device", "o")


class VolumeStore:
    def __init__(self, root: Path, host: str, volume_roots: tuple[str, ...] = ()):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.volume_roots = volume_roots
        self._by_name: dict[str, VolumeRecord] = {}
        for d in sorted(self.root.iterdir()):
            rec = read_record(d / "record.json", VolumeRecord)
            if rec is not None and rec.name == d.name:
                self._by_name[rec.name] = rec

    def data(self, name: str) -> Path:
        return self.root / name / "_data"

    def all(self) -> list[VolumeRecord]:
        return sorted(self._by_name.values(), key=lambda v: v.name)

    def find(self, name: str) -> VolumeRecord | None:
        return self._by_name.get(name)

    def get(self, name: str) -> VolumeRecord:
        v = self._by_name.get(name)
        if v is None:
            raise NotFound(f"no such volume: {name}")
        return v

    def create(self, name: str = "", *, driver: str = "local", options: dict[str, str] | None = None,
               labels: dict[str, str] | None = None, anonymous: bool = False,
               exist_ok: bool = True) -> VolumeRecord:
        """A new volume; an existing one of that name is returned as it is (docker's create)."""
        if driver != "local":
            raise InvalidArgument(f"volume driver {driver!r} is not supported: only 'local'")
        options = dict(options or {})
        bad = sorted(set(options) - set(_OPTION_KEYS))
        if bad:
            raise InvalidArgument(f"invalid volume option {bad[0]!r}: the local driver takes type, device and o")
        self._check_options(options)
        if not name:
            name, anonymous = secrets.token_hex(32), True
        check_name(name)
        old = self._by_name.get(name)
        if old is not None:
            if exist_ok and not options and not anonymous:
                return old
            raise AlreadyExists(f"volume {name} already exists")
        labels = dict(labels or {})
        if anonymous:
            labels.setdefault(ANONYMOUS_LABEL, "")
        rec = VolumeRecord(name=name, host=self.host, driver=driver, mountpoint=str(self.data(name)),
                           created=rfc3339nano(), labels=labels, options=options, anonymous=anonymous,
                           needs_copy_up=not options)  # docker copies up into no mounted device
        d = self.root / name
        d.mkdir(mode=0o700)
        self.data(name).mkdir(mode=0o755)
        write_record(d / "record.json", rec)
        self._by_name[name] = rec
        return rec

    def _check_options(self, options: dict[str, str]) -> None:
        kind = options.get("type", "")
        if not options:
            return
        if kind == "tmpfs":
            if any(c in options.get("o", "") for c in "\n\0"):
                raise InvalidArgument("invalid tmpfs options")
            return
        if kind in ("none", "") and "bind" in options.get("o", "").split(","):
            dev = options.get("device", "")
            if not os.path.isabs(dev):
                raise InvalidArgument("a bind volume needs an absolute device=DIR")
            real = os.path.realpath(dev)
            roots = self.volume_roots
            if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
                where = f"({':'.join(roots)})" if roots else "(none set)"
                raise PermissionDenied(f"volume device {dev} is outside DOCKYARD_AGENT_VOLUME_ROOTS {where}",
                                       detail_code=VOLUME_OUTSIDE_ROOTS)
            if not os.path.isdir(real):
                raise InvalidArgument(f"volume device {dev} is not a directory")
            options["device"] = real  # what was checked is what gets mounted
            return
        raise InvalidArgument(f"unsupported volume options {options}: type=tmpfs, or type=none,o=bind,device=DIR")

    def prepare(self, name: str) -> Path:
        """The volume's mountpoint, its device mounted there first if it has one."""
        rec = self.get(name)
        data = self.data(name)
        if rec.options and not os.path.ismount(data):
            o = rec.options.get("o", "")
            if rec.options.get("type") == "tmpfs":
                cmd = ["mount", "-t", "tmpfs"] + (["-o", o] if o else []) + ["tmpfs", str(data)]
            else:
                cmd = ["mount", "--bind", rec.options["device"], str(data)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise InvalidArgument(f"volume {name}: {p.stderr.strip() or 'mount failed'}")
        return data

    def copied_up(self, name: str) -> None:
        rec = self.get(name)
        if rec.needs_copy_up:
            self._save(msgspec.structs.replace(rec, needs_copy_up=False))

    def _save(self, rec: VolumeRecord) -> None:
        write_record(self.root / rec.name / "record.json", rec)
        self._by_name[rec.name] = rec

    def remove(self, name: str) -> None:
        self.get(name)
        data = self.data(name)
        while os.path.ismount(data):
            if subprocess.run(["umount", "-l", str(data)], capture_output=True).returncode != 0:
                break
        d = self.root / name
        (d / "record.json").unlink(missing_ok=True)  # the record goes first: no half-removed volume
        self._by_name.pop(name, None)
        shutil.rmtree(d, ignore_errors=True)

    def size(self, name: str) -> int:
        return disk_usage(self.data(name))


def disk_usage(path: Path) -> int:
    """Bytes allocated under `path`, hard links once, as `du -s -B1` counts them."""
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    total += st.st_blocks * 512
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except FileNotFoundError:
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
    return total
