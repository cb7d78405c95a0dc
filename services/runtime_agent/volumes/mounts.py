"""A container's mounts from `-v`, `--mount`, `--volumes-from` and the image's VOLUMEs, docker's rules.

`-v NAME:/path[:ro]` is a named volume (made if missing), `-v /host:/path` a host bind,
`-v /path` an anonymous volume; `--mount` says which in so many words. The image's
VOLUME paths no other mount covers get an anonymous volume each. Parsing is pure
(`parse`), so bad input is refused before any volume is made (`materialize`).
"""

from __future__ import annotations

import os
import posixpath
import stat
import subprocess
from pathlib import Path

from services.runtime_agent.volumes.store import VolumeStore
from shared.errors import InvalidArgument
from shared.layers.paths import follow_in_root
from shared.messages.agent import Container, Volume
from shared.messages.volumes import NAME_RE, Mount


def _target(path: str, spec: str) -> str:
    if not posixpath.isabs(path) or posixpath.normpath(path) == "/":
        raise InvalidArgument(f"invalid mount {spec!r}: the container path must be absolute and not /")
    return posixpath.normpath(path)


def parse_v(spec: str) -> Volume:
    """One `-v`: `SRC:DST[:OPTS]` (SRC a host path or a volume name) or `DST` (anonymous)."""
    parts = spec.split(":")
    if len(parts) == 1:
        return Volume(source="", destination=_target(parts[0], spec), kind="volume", anonymous=True)
    opts: list[str] = []
    if len(parts) == 3:
        opts = parts.pop().split(",")
    if len(parts) != 2 or any(o not in ("ro", "rw", "nocopy", "z", "Z") for o in opts) or (
            "ro" in opts and "rw" in opts):
        raise InvalidArgument(f"invalid volume {spec!r}: expected SOURCE:CONTAINER[:ro|rw]")
    src, dst = parts
    ro = "ro" in opts
    if posixpath.isabs(src):
        return Volume(source=posixpath.normpath(src), destination=_target(dst, spec), readonly=ro)
    if not NAME_RE.match(src):
        raise InvalidArgument(f"invalid volume {spec!r}: {src!r} is neither an absolute host path "
                              "nor a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
    return Volume(source="", destination=_target(dst, spec), readonly=ro, kind="volume", name=src,
                  nocopy="nocopy" in opts)


def parse_mount(m: Mount) -> Volume | None:
    """A `--mount` of type volume or bind as a Volume; tmpfs mounts are runflags' (None)."""
    shown = f"type={m.type},target={m.target}"
    if not m.target:
        raise InvalidArgument(f"invalid --mount {shown}: target is required")
    dst = _target(m.target, shown)
    if m.type == "tmpfs":
        if m.source:
            raise InvalidArgument(f"invalid --mount {shown}: a tmpfs mount takes no source")
        return None
    if m.type == "bind":
        if not posixpath.isabs(m.source):
            raise InvalidArgument(f"invalid --mount {shown}: a bind mount needs an absolute source")
        return Volume(source=posixpath.normpath(m.source), destination=dst, readonly=m.readonly)
    if m.source and not NAME_RE.match(m.source):
        raise InvalidArgument(f"invalid --mount {shown}: {m.source!r} is not a volume name")
    return Volume(source="", destination=dst, readonly=m.readonly, kind="volume", name=m.source,
                  anonymous=not m.source, nocopy=m.nocopy)


def parse_from(spec: str) -> tuple[str, bool | None]:
    ref, _, mode = spec.partition(":")
    if mode not in ("", "ro", "rw") or not ref:
        raise InvalidArgument(f"invalid --volumes-from {spec!r}: CONTAINER[:ro|rw]")
    return ref, (None if not mode else mode == "ro")


def parse(volumes: list[str], mounts: list[Mount]) -> list[Volume]:
    out = [parse_v(s) for s in volumes]
    out += [v for v in (parse_mount(m) for m in mounts) if v is not None]
    _no_duplicates(out)
    return out


def _no_duplicates(vols: list[Volume]) -> None:
    seen: set[str] = set()
    for v in vols:
        if v.destination in seen:
            raise InvalidArgument(f"duplicate mount point: {v.destination}")
        seen.add(v.destination)


def inherited(volumes_from: list[str], find) -> list[Volume]:
    """The mounts of each `--volumes-from` container (`find(ref) -> Container`), mode overridden."""
    out = []
    for spec in volumes_from:
        ref, ro = parse_from(spec)
        src: Container = find(ref)
        for v in src.config.volumes:
            out.append(Volume(source=v.source, destination=v.destination,
                              readonly=v.readonly if ro is None else ro, kind=v.kind, name=v.name))
    return out


def image_volumes(paths: dict | None, taken: set[str]) -> list[Volume]:
    """An anonymous volume for each of the image's VOLUME paths no mount covers."""
    out = []
    for p in sorted(paths or {}):
        if not posixpath.isabs(p):
            continue
        dst = posixpath.normpath(p)
        if dst != "/" and dst not in taken:
            out.append(Volume(source="", destination=dst, kind="volume", anonymous=True))
    return out


def materialize(vols: list[Volume], store: VolumeStore, labels_for: dict[str, dict[str, str]]) -> list[Volume]:
    """Each volume mount with its volume made (named ones if missing) and its mountpoint as source."""
    out = []
    for v in vols:
        if v.kind != "volume":
            out.append(v)
            continue
        if v.anonymous:
            rec = store.create(anonymous=True)
        else:
            rec = store.find(v.name) or store.create(v.name, labels=labels_for.get(v.name))
        out.append(Volume(source=rec.mountpoint, destination=v.destination, readonly=v.readonly, kind="volume",
                          name=rec.name, anonymous=v.anonymous, nocopy=v.nocopy))
    return out


# ---- docker's copy-up ------------------------------------------------------------------

def copy_up(rootfs: Path, destination: str, data: Path) -> bool:
    """Seed an empty volume with the image's directory at `destination`: content, owners, modes.

    The path is resolved inside the rootfs (a link in the image cannot point the copy
    at the host); `cp -a` keeps owners, modes, times, links and xattrs, and follows no
    link it copies. False if there was nothing to copy.
    """
    def readlink(p: str) -> str | None:
        full = os.path.join(rootfs, p)
        try:
            return os.readlink(full) if stat.S_ISLNK(os.lstat(full).st_mode) else None
        except FileNotFoundError:
            return None

    src = Path(rootfs) / follow_in_root(destination.lstrip("/"), readlink)
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode) or any(os.scandir(data)):
        return False
    os.chown(data, st.st_uid, st.st_gid)
    os.chmod(data, stat.S_IMODE(st.st_mode))
    p = subprocess.run(["cp", "-a", "-T", str(src), str(data)], capture_output=True, text=True)
    if p.returncode != 0:
        raise InvalidArgument(f"copying the image's {destination} into its volume failed: {p.stderr.strip()}")
    return True


def users(containers: list[Container], name: str) -> list[Container]:
    return [c for c in containers if any(v.kind == "volume" and v.name == name for v in c.config.volumes)]



def with_tmpfs_mounts(req):
    """`--mount type=tmpfs` as runflags' `--tmpfs` (one code path for tmpfs mounts)."""
    import msgspec

    from shared.messages.runflags import Tmpfs
    extra = []
    for m in req.mounts:
        if m.type != "tmpfs":
            continue
        parse_mount(m)
        opts = ([f"size={m.tmpfs_size}"] if m.tmpfs_size else []) + (
            [f"mode={m.tmpfs_mode:o}"] if m.tmpfs_mode else []) + (["ro"] if m.readonly else [])
        extra.append(Tmpfs(path=posixpath.normpath(m.target), options=opts))
    if not extra:
        return req
    flags = msgspec.structs.replace(req.flags, tmpfs=[*req.flags.tmpfs, *extra])
    return msgspec.structs.replace(req, flags=flags)
