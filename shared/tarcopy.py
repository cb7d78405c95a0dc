"""`cp`'s tar streams: written from a path inside a root, extracted into a directory inside a
root, so that no read or write can leave the root whatever symlinks are in it.

The layer unpacker's rules (shared/layers/unpack.py) with docker cp's semantics on top:
a path is resolved with `follow_in_root` (a symlink, absolute or `..`, never climbs
above the root), then reached by opening one component at a time from the root's
directory fd with O_NOFOLLOW, and every write is an `*at` call on a single final name
that is never followed. A symlink swapped in between resolving and opening makes the
open fail (ELOOP/ENOTDIR) instead of being followed. Reading walks with `os.fwalk`
(directory fds, links not followed). Bytes stream in CHUNK pieces both ways.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Callable
from typing import BinaryIO

from shared.errors import InvalidArgument, NotFound
from shared.layers.paths import follow_in_root

CHUNK = 512 << 10
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _readlink_at(rootfd: int) -> Callable[[str], str | None]:
    def readlink(rel: str) -> str | None:
        try:
            return os.readlink(rel, dir_fd=rootfd) if rel else None
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
                return None  # not a link (or not there: the caller finds out)
            raise
    return readlink


def resolve(rootfd: int, path: str, *, follow_last: bool) -> str:
    """`path` inside the root, links followed inside it (the last one only if `follow_last`)."""
    rel = path.strip("/")
    head, _, last = rel.rpartition("/")
    if follow_last or not last or last in (".", ".."):
        return follow_in_root(rel, _readlink_at(rootfd))
    parent = follow_in_root(head, _readlink_at(rootfd))
    return f"{parent}/{last}" if parent else last


def open_dir(rootfd: int, rel: str, *, create: bool = False, mode: int = 0o755) -> int:
    """A directory fd for resolved `rel`, every component opened with O_NOFOLLOW from the root."""
    fd = os.dup(rootfd)
    try:
        for name in [p for p in rel.split("/") if p]:
            if name == "..":
                raise InvalidArgument(f"{rel}: .. in a resolved path")
            try:
                nfd = os.open(name, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise NotFound(f"no such directory: /{rel}") from None
                os.mkdir(name, mode, dir_fd=fd)
                nfd = os.open(name, _DIR, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise InvalidArgument(f"/{rel}: not a directory") from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


# ---- writing a tar of a path in a root ---------------------------------------------------

def lstat_in(root: str, path: str, *, follow_last: bool) -> tuple[str, os.stat_result, str]:
    """(resolved path, its lstat, link target or "") of `path` inside `root`."""
    rootfd = os.open(root, _DIR)
    try:
        rel = resolve(rootfd, path, follow_last=follow_last)
        head, _, name = rel.rpartition("/")
        pfd = open_dir(rootfd, head)
        try:
            if not name:
                return rel, os.fstat(pfd), ""
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                raise NotFound(f"no such file or directory: {path}") from None
            target = os.readlink(name, dir_fd=pfd) if stat.S_ISLNK(st.st_mode) else ""
            return rel, st, target
        finally:
            os.close(pfd)
    finally:
        os.close(rootfd)


def write_tar(root: str, path: str, out: BinaryIO, *, follow_last: bool = False, top: str | None = None) -> None:
    """A tar of `path` inside `root` to `out`, its top entry named `top` (default: its basename;
    "." for docker's `PATH/.`, the contents alone)."""
    contents_only = path.rstrip("/").endswith("/.") or path.strip("/") == "."
    follow = follow_last or path.endswith("/")
    rootfd = os.open(root, _DIR)
    try:
        rel = resolve(rootfd, path.rstrip("/") if not contents_only else path, follow_last=follow)
        head, _, name = rel.rpartition("/")
        if top is None:
            top = "." if contents_only else (os.path.basename(path.rstrip("/")) or ".")
            if top in ("..",):
                top = "."
        # "w" on a counted file, not the stream mode "w|": its block buffer grows by bytes
        # concatenation, 16 KiB at a time, and copied a 100 MB file 16 times over.
        with tarfile.open(fileobj=_Counted(out), mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tf:
            pfd = open_dir(rootfd, head)
            try:
                if not name:
                    _add_dir(tf, pfd, top)
                    return
                try:
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    raise NotFound(f"no such file or directory: {path}") from None
                if stat.S_ISDIR(st.st_mode):
                    dfd = os.open(name, _DIR, dir_fd=pfd)
                    try:
                        _add_dir(tf, dfd, top)
                    finally:
                        os.close(dfd)
                else:
                    _add_entry(tf, pfd, name, top, st, {})
            finally:
                os.close(pfd)
    finally:
        os.close(rootfd)


def _add_dir(tf: tarfile.TarFile, dfd: int, top: str) -> None:
    links: dict[tuple[int, int], str] = {}
    if top != ".":  # a tree's contents alone (export, `PATH/.`) have no entry of their own
        _add_entry(tf, None, dfd, top, os.fstat(dfd), links)
    # fwalk never follows a link and opens each directory relative to its parent's fd
    for dirpath, dirnames, filenames, fd in os.fwalk(".", dir_fd=dfd, follow_symlinks=False):
        sub = dirpath[2:]
        base = "/".join(p for p in (top if top != "." else "", sub) if p)
        for n in sorted(dirnames) + sorted(filenames):
            try:
                st = os.stat(n, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we walked
            _add_entry(tf, fd, n, f"{base}/{n}" if base else n, st, links)
        dirnames.sort()


def _add_entry(tf: tarfile.TarFile, pfd: int | None, name, arcname: str, st: os.stat_result,
               links: dict[tuple[int, int], str]) -> None:
    info = tarfile.TarInfo(arcname)
    info.mode, info.uid, info.gid, info.mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)
    m = st.st_mode
    if stat.S_ISDIR(m):
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
        return
    if stat.S_ISLNK(m):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=pfd)
        tf.addfile(info)
        return
    if stat.S_ISREG(m):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info.type, info.linkname = tarfile.LNKTYPE, links[key]
            tf.addfile(info)
            return
        links[key] = arcname
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=pfd)
        with os.fdopen(fd, "rb", buffering=0) as f:
            now = os.fstat(f.fileno())
            if not stat.S_ISREG(now.st_mode):
                return  # swapped for something else while we looked
            info.size = now.st_size
            tf.addfile(info, _Exactly(f, now.st_size))
        return
    if stat.S_ISFIFO(m):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(m) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        return  # sockets: tar has no type for them
    tf.addfile(info)


class _Counted:
    """A file only written forward, with the `tell` that tarfile's "w" mode asks for."""

    def __init__(self, out: BinaryIO):
        self.out, self.pos = out, 0

    def write(self, b) -> int:
        self.out.write(b)
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos


class _Exactly:
    """A file read as exactly `size` bytes (a file growing meanwhile is cut, a shrinking one padded)."""

    def __init__(self, f, size: int):
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n) if n else b""
        if len(data) < n:
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        return data


# ---- extracting a tar into a directory in a root ------------------------------------------

def extract(src: BinaryIO, root: str, dest: str, *, rename: tuple[str, str] | None = None,
            keep_owner: bool = False, owner: tuple[int, int] = (0, 0)) -> int:
    """Extract the tar stream `src` into directory `dest` (resolved inside `root`); the bytes of files.

    `rename` (old, new) renames the top entry as docker does when the destination does not
    exist yet. Owners are the archive's with `keep_owner` (docker's -a), else `owner`.
    """
    rootfd = os.open(root, _DIR)
    written = 0
    try:
        dest_rel = resolve(rootfd, dest, follow_last=True)
        os.close(open_dir(rootfd, dest_rel))  # it must exist as a directory
        with tarfile.open(fileobj=src, mode="r|", bufsize=CHUNK) as tf:
            for m in tf:
                name = _entry_name(m.name, rename)
                if name is None:
                    continue
                head, _, base = name.rpartition("/")
                if not base:  # the top "." itself: the destination directory
                    continue
                parent = resolve(rootfd, f"{dest_rel}/{head}" if head else dest_rel, follow_last=True)
                pfd = open_dir(rootfd, parent, create=True)
                try:
                    written += _write_entry(tf, m, pfd, base, rootfd, dest_rel, rename,
                                            m.uid if keep_owner else owner[0], m.gid if keep_owner else owner[1])
                finally:
                    os.close(pfd)
    except tarfile.ReadError as e:
        raise InvalidArgument(f"not a tar stream: {e}") from e
    finally:
        os.close(rootfd)
    return written


def _entry_name(raw: str, rename: tuple[str, str] | None) -> str | None:
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidArgument(f"tar entry {raw!r} climbs out of the destination")
    if rename and parts and parts[0] == rename[0]:
        parts[0] = rename[1]
    return "/".join(parts) if parts else ""


def _write_entry(tf, m: tarfile.TarInfo, pfd: int, base: str, rootfd: int, dest_rel: str,
                 rename, uid: int, gid: int) -> int:
    try:
        old = os.stat(base, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    if m.isdir():
        if old is not None and not stat.S_ISDIR(old.st_mode):
            os.unlink(base, dir_fd=pfd)
            old = None
        if old is None:
            os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, _DIR, dir_fd=pfd)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, m.mode & 0o7777)
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)
        return 0
    if old is not None:
        if stat.S_ISDIR(old.st_mode):
            raise InvalidArgument(f"cannot overwrite directory {base!r} with a non-directory")
        os.unlink(base, dir_fd=pfd)
    if m.isreg():
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        n = 0
        try:
            f = tf.extractfile(m)
            while chunk := f.read(CHUNK):
                _write_all(fd, chunk)
                n += len(chunk)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears setuid bits
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)
        return n
    if m.issym():
        os.symlink(m.linkname, base, dir_fd=pfd)  # never followed by us; inside, it points where it likes
        os.chown(base, uid, gid, dir_fd=pfd, follow_symlinks=False)
        return 0
    if m.islnk():
        target = _entry_name(m.linkname, rename)
        if not target:
            raise InvalidArgument(f"hard link {m.name!r} to nothing")
        thead, _, tbase = target.rpartition("/")
        tparent = resolve(rootfd, f"{dest_rel}/{thead}" if thead else dest_rel, follow_last=True)
        tfd = open_dir(rootfd, tparent)
        try:
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)
        return 0
    if m.isfifo():
        os.mkfifo(base, m.mode & 0o777, dir_fd=pfd)
        return 0
    return 0  # device nodes are not made: a copy must not hand a container a host device


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
