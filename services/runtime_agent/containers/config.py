"""A container's process, from the image's config and the run flags, with docker's semantics.

Entrypoint/Cmd: `--entrypoint` replaces the image's Entrypoint and drops its Cmd; a
command after the image name replaces Cmd. Env: the image's, then each `-e` by name.
WorkingDir: `-w`, else the image's, else "/". User: `-u`, else the image's, as
`user[:group]` by name or number, names looked up in the image's /etc/passwd and
/etc/group (read without following any link out of the rootfs).
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidArgument, NotFound, PermissionDenied
from shared.layers.paths import follow_in_root
from shared.messages.agent import VOLUME_OUTSIDE_ROOTS, RestartPolicy, RunRequest, Volume
from shared.oci.manifest import ContainerConfig as ImageRunConfig

_MAX_ETC_FILE = 4 << 20


@dataclass(frozen=True)
class Process:
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    cwd: str
    user: str

    @property
    def args(self) -> list[str]:
        return [*self.entrypoint, *self.cmd]


def process_of(image: ImageRunConfig, req: RunRequest) -> Process:
    if req.entrypoint is not None:
        entrypoint = [a for a in req.entrypoint if a != ""] if req.entrypoint != [""] else []
        cmd = list(req.command or [])
    else:
        entrypoint = list(image.entrypoint or [])
        cmd = list(req.command) if req.command else list(image.cmd or [])
    if not entrypoint and not cmd:
        raise InvalidArgument("no command specified: the image has none and none was given")
    env = merge_env(image.env or [], req.env)
    cwd = req.workdir or image.working_dir or "/"
    if not posixpath.isabs(cwd):
        raise InvalidArgument(f"the working directory {cwd!r} is invalid: it needs to be an absolute path")
    return Process(entrypoint, cmd, env, posixpath.normpath(cwd), req.user or image.user or "")


def merge_env(base: list[str], overrides: list[str]) -> list[str]:
    out: dict[str, str] = {}
    for e in [*base, *overrides]:
        name, sep, _ = e.partition("=")
        if not name or not sep:
            raise InvalidArgument(f"environment entry is not NAME=VALUE: {e!r}")
        out[name] = e
    return list(out.values())


def parse_volumes(specs: list[str]) -> list[Volume]:
    """`HOST:CTR[:ro|:rw]` with absolute paths (named volumes are not supported)."""
    out = []
    for spec in specs:
        parts = spec.split(":")
        mode = "rw"
        if len(parts) == 3:
            mode = parts.pop()
        if len(parts) != 2 or mode not in ("ro", "rw"):
            raise InvalidArgument(f"invalid volume {spec!r}: expected HOST:CONTAINER[:ro|rw]")
        src, dst = parts
        if not posixpath.isabs(src):
            raise InvalidArgument(f"invalid volume {spec!r}: the host path must be absolute "
                                  "(named volumes are not supported)")
        if not posixpath.isabs(dst) or posixpath.normpath(dst) == "/":
            raise InvalidArgument(f"invalid volume {spec!r}: the container path must be absolute and not /")
        out.append(Volume(source=posixpath.normpath(src), destination=posixpath.normpath(dst),
                          readonly=mode == "ro"))
    return out


VOLUME_ROOTS_ENV = "DOCKYARD_AGENT_VOLUME_ROOTS"


def parse_volume_roots(text: str) -> tuple[str, ...]:
    """The `:`-separated absolute directories of DOCKYARD_AGENT_VOLUME_ROOTS, symlinks resolved."""
    roots = []
    for part in text.split(":"):
        if not part:
            continue
        if not posixpath.isabs(part):
            raise InvalidArgument(f"{VOLUME_ROOTS_ENV}: {part!r} is not an absolute path")
        roots.append(os.path.realpath(part))
    return tuple(roots)


def confine_volumes(volumes: list[Volume], roots: tuple[str, ...] | None) -> list[Volume]:
    """Each host path with its symlinks and `..` resolved; outside every root refused.

    `roots` None binds anything (the admin-only verb). The resolved path is what gets
    mounted, so a link that pointed inside a root cannot be bent elsewhere afterwards.
    """
    out = []
    for v in volumes:
        real = os.path.realpath(v.source)
        if roots is not None and not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
            where = f"({':'.join(roots)})" if roots else "(none set)"
            shown = v.source if real == v.source else f"{v.source} (that is {real})"
            raise PermissionDenied(f"host path {shown} is outside {VOLUME_ROOTS_ENV} {where}: "
                                   "only an admin may bind it", detail_code=VOLUME_OUTSIDE_ROOTS)
        out.append(Volume(source=real, destination=v.destination, readonly=v.readonly))
    return out


def parse_restart(text: str) -> RestartPolicy:
    name, _, count = (text or "no").partition(":")
    if name not in ("no", "on-failure", "always", "unless-stopped"):
        raise InvalidArgument(f"invalid restart policy {text!r}: no, on-failure[:N], always or unless-stopped")
    if count and name != "on-failure":
        raise InvalidArgument(f"invalid restart policy {text!r}: only on-failure takes a retry count")
    try:
        n = int(count) if count else 0
    except ValueError:
        raise InvalidArgument(f"invalid restart policy {text!r}: the retry count must be a number") from None
    if n < 0:
        raise InvalidArgument(f"invalid restart policy {text!r}: negative retry count")
    return RestartPolicy(name=name, maximum_retry_count=n)  # type: ignore[arg-type]


# ---- users -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ids:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


def resolve_user(rootfs: Path, user: str) -> Ids:
    """uid, gid and supplementary groups of `user[:group]` in the image at `rootfs`."""
    if not user:
        user = "0"
    name, _, group = user.partition(":")
    passwd = _table(rootfs, "etc/passwd")
    groups = _table(rootfs, "etc/group")
    login = None
    if name.isdigit():
        uid = int(name)
        entry = next((p for p in passwd if len(p) > 3 and p[2] == name), None)
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
        login = entry[0] if entry else None
    else:
        entry = next((p for p in passwd if p[0] == name and len(p) > 3), None)
        if entry is None or not entry[2].isdigit() or not entry[3].isdigit():
            raise InvalidArgument(f"unable to find user {name}: no matching entries in passwd file")
        uid, gid, login = int(entry[2]), int(entry[3]), name
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((g for g in groups if g[0] == group and len(g) > 2), None)
            if g is None or not g[2].isdigit():
                raise InvalidArgument(f"unable to find group {group}: no matching entries in group file")
            gid = int(g[2])
    extra: list[int] = []
    if login is not None and not group:
        for g in groups:
            if len(g) > 3 and g[2].isdigit() and login in g[3].split(",") and int(g[2]) != gid:
                extra.append(int(g[2]))
    if uid > 0xFFFFFFFE or gid > 0xFFFFFFFE:
        raise InvalidArgument(f"user {user!r}: ids out of range")
    return Ids(uid, gid, tuple(dict.fromkeys(extra)))


def _table(rootfs: Path, rel: str) -> list[list[str]]:
    try:
        data = read_in_root(rootfs, rel)
    except NotFound:
        return []
    return [line.split(":") for line in data.decode(errors="replace").splitlines()
            if line and not line.startswith("#")]


def read_in_root(root: Path, rel: str) -> bytes:
    """Read `rel` inside `root`, resolving symlinks as if `root` were "/" (a hostile image
    cannot make the agent read a host file through /etc/passwd -> /host/secret)."""
    def readlink(p: str) -> str | None:
        path = os.path.join(root, p)
        try:
            return os.readlink(path) if stat.S_ISLNK(os.lstat(path).st_mode) else None
        except FileNotFoundError:
            raise NotFound(f"{rel} not in the image") from None

    resolved = follow_in_root(rel, readlink)
    path = os.path.join(root, resolved)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotFound(f"{rel} in the image is not a regular file")
        return os.read(fd, _MAX_ETC_FILE)
    finally:
        os.close(fd)
