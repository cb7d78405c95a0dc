"""Unpack a (possibly hostile) layer tar into a fresh directory, safely and in one stream.

Safety comes from how paths are resolved, not from checking strings after the fact:
every entry's parent is reached by opening one component at a time relative to a
directory fd with O_NOFOLLOW|O_DIRECTORY, starting from `dest`; every write is then a
`*at` call on that fd for a single final name that is never followed. A symlink (from
this layer or not) can therefore never be traversed, and `..` or absolute names are
refused up front. Entries that would need a symlink to be traversed are refused too:
tars made by walking a filesystem (docker, BuildKit, this package) never contain them.

Whiteouts become what overlayfs understands (a 0/0 char device, an opaque xattr), so
the directory can be stacked as a lowerdir as is.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.errors import AlreadyExists, InvalidArgument, Unavailable
from shared.layers.compression import CHUNK, open_decompressed
from shared.layers.conventions import (
    OPAQUE_WHITEOUT,
    OVERLAY_OPAQUE_XATTR,
    PAX_XATTR_PREFIX,
    WHITEOUT_META_PREFIX,
    WHITEOUT_PREFIX,
    xattr_allowed,
)
from shared.oci.digest import Digest, Hasher

DEFAULT_MAX_SIZE = 64 << 30
DEFAULT_MAX_ENTRIES = 1_000_000
# Go's archive/tar caps PAX and GNU long-name records at 1 MiB; so do we, or a
# single header could make tarfile buffer gigabytes.
_MAX_META_RECORD = 1 << 20
_MAX_PATH = 4096

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
               tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
# Errors that say "this entry makes no sense here" rather than "the host is failing".
_ENTRY_ERRNOS = {errno.ENAMETOOLONG, errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
                 errno.ELOOP, errno.EINVAL, errno.EPERM, errno.EMLINK, errno.ENOTEMPTY}


@dataclass(frozen=True, slots=True)
class UnpackResult:
    diff_id: Digest
    size: int  # bytes of the uncompressed tar stream
    entries: int


class _HashingReader(io.RawIOBase):
    """Hashes and counts the uncompressed stream; refuses to go past `max_size`.

    Seekable forward only (by reading through, so skipped bytes are hashed too): that
    is all tarfile's random-access mode needs, and it spares us its stream mode, whose
    buffer handling copies the whole buffer on every header read.
    """

    def __init__(self, src: io.RawIOBase, max_size: int):
        self._src = src
        self._max = max_size
        self.hasher = Hasher("sha256")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.hasher.size

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self._src.readinto(b)
        if n:
            self.hasher.update(memoryview(b)[:n])
            if self.hasher.size > self._max:
                raise InvalidArgument(f"layer is larger than the limit of {self._max} bytes uncompressed")
        return n or 0

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self.hasher.size
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("layer streams seek forward only")
        if pos < self.hasher.size:
            raise io.UnsupportedOperation("layer streams seek forward only")
        buf = bytearray(min(CHUNK, pos - self.hasher.size) or 1)
        while self.hasher.size < pos:
            want = min(len(buf), pos - self.hasher.size)
            if not self.readinto(memoryview(buf)[:want]):
                break  # past the end: the next read says "unexpected end of data"
        return self.hasher.size


class _SafeTarInfo(tarfile.TarInfo):
    """TarInfo that bounds header records and reports corrupt headers as errors.

    tarfile quietly ends the archive at a bad checksum, a truncated header or a bad PAX
    record; a damaged layer would then unpack "successfully" with files missing.
    """

    @classmethod
    def fromtarfile(cls, tarfile_):  # type: ignore[override]
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):
            raise  # end-of-archive blocks, or a stream ending on a header boundary (Go accepts it)
        except tarfile.HeaderError as e:
            raise InvalidArgument(f"invalid tar header at offset {tarfile_.offset}: {e}") from e

    def _proc_member(self, tarfile_):  # private hook, stable since Python 2
        if self.type in _META_TYPES and self.size > _MAX_META_RECORD:
            raise InvalidArgument(f"tar header record of {self.size} bytes is over the 1 MiB limit")
        return super()._proc_member(tarfile_)


def split_entry_name(name: str) -> tuple[str, ...]:
    """The path components of a tar entry name; refuses names that could leave the root."""
    if name.startswith("/"):
        raise InvalidArgument(f"layer entry {name!r}: absolute path")
    if len(name) > _MAX_PATH:
        raise InvalidArgument(f"layer entry {name[:64]!r}...: path longer than {_MAX_PATH}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise InvalidArgument(f"layer entry {name!r}: '..' component")
    return parts


class _Tree:
    """The destination directory, reached only through directory fds."""

    def __init__(self, root_fd: int):
        self.root_fd = root_fd
        # Entries come grouped by directory: keep the last parent open.
        self._cached: tuple[tuple[str, ...], int] | None = None

    def close(self) -> None:
        self.invalidate()

    def invalidate(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def walk(self, parts: tuple[str, ...], *, create: bool, entry: str) -> int:
        """A new fd of directory `parts`; never crosses a symlink. Caller closes it."""
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(parts):
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise InvalidArgument(
                            f"layer entry {entry!r}: {'/'.join(parts[:i + 1])} does not exist") from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(nfd, 0o755)  # not the umask's idea
                except OSError as e:
                    if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                    what = "symlink" if stat.S_ISLNK(st.st_mode) else "non-directory"
                    raise InvalidArgument(
                        f"layer entry {entry!r}: path goes through {what} {'/'.join(parts[:i + 1])}") from None
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def parent(self, parts: tuple[str, ...], *, entry: str) -> int:
        """A borrowed fd of directory `parts` (created if missing); valid until the next call."""
        if not parts:
            return self.root_fd
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        fd = self.walk(parts, create=True, entry=entry)
        self.invalidate()
        self._cached = (parts, fd)
        return fd

    def clear_name(self, dfd: int, parts: tuple[str, ...], *, keep_dir: bool) -> bool:
        """Make room for entry `parts` in its parent `dfd`: True if it is a directory to merge into."""
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            if self._cached is not None and self._cached[0][:len(parts)] == parts:
                self.invalidate()  # the cached directory goes away with this one
            shutil.rmtree(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)
        return False


class _Unpacker:
    def __init__(self, tree: _Tree, tf: tarfile.TarFile, max_size: int, max_entries: int):
        self.tree = tree
        self.tf = tf
        self.max_size = max_size
        self.max_entries = max_entries
        self.entries = 0
        self.file_bytes = 0
        self.dir_times: list[tuple[tuple[str, ...], int]] = []

    def run(self) -> None:
        while (info := self.tf.next()) is not None:
            self.tf.members.clear()  # we stream; tarfile would keep every header
            self.entries += 1
            if self.entries > self.max_entries:
                raise InvalidArgument(f"layer has more than {self.max_entries} entries")
            try:
                self.apply(info)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise Unavailable(f"no space left unpacking layer entry {info.name!r}") from e
                if e.errno in _ENTRY_ERRNOS:
                    raise InvalidArgument(f"layer entry {info.name!r}: {e.strerror}") from e
                raise
        self.set_dir_times()

    def apply(self, info: tarfile.TarInfo) -> None:
        parts = split_entry_name(info.name)
        if not parts:
            if not info.isdir():
                raise InvalidArgument(f"layer entry {info.name!r}: the root must be a directory")
            self.set_dir_meta(self.tree.root_fd, info)
            self.dir_times.append(((), _ns(info.mtime)))
            return
        name = parts[-1]
        if name.startswith(WHITEOUT_PREFIX):
            self.whiteout(parts, info)
        elif info.isdir():
            pfd = self.tree.parent(parts[:-1], entry=info.name)
            if not self.tree.clear_name(pfd, parts, keep_dir=True):
                os.mkdir(name, 0o700, dir_fd=pfd)
            dfd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            try:
                self.set_dir_meta(dfd, info)
            finally:
                os.close(dfd)
            self.dir_times.append((parts, _ns(info.mtime)))
        elif info.isreg():
            self.regular(parts, info)
        elif info.issym():
            pfd = self.tree.parent(parts[:-1], entry=info.name)
            self.tree.clear_name(pfd, parts, keep_dir=False)
            # Any target is fine: it is data, resolved later inside the container's root.
            os.symlink(info.linkname, name, dir_fd=pfd)
            os.chown(name, info.uid, info.gid, dir_fd=pfd, follow_symlinks=False)
            self.set_xattrs(f"/proc/self/fd/{pfd}/{name}", info)
            t = _ns(info.mtime)
            os.utime(name, ns=(t, t), dir_fd=pfd, follow_symlinks=False)
        elif info.islnk():
            self.hardlink(parts, info)
        elif info.ischr() or info.isblk() or info.isfifo():
            raise InvalidArgument(f"layer entry {info.name!r}: device nodes and FIFOs are not allowed")
        else:
            raise InvalidArgument(f"layer entry {info.name!r}: unsupported tar entry type {info.type!r}")

    def whiteout(self, parts: tuple[str, ...], info: tarfile.TarInfo) -> None:
        name = parts[-1]
        pfd = self.tree.parent(parts[:-1], entry=info.name)
        if name == OPAQUE_WHITEOUT:
            os.setxattr(pfd, OVERLAY_OPAQUE_XATTR, b"y")
            return
        if name.startswith(WHITEOUT_META_PREFIX):
            return  # aufs bookkeeping, nothing to hide
        hidden = name[len(WHITEOUT_PREFIX):]
        if hidden in ("", ".", ".."):
            raise InvalidArgument(f"layer entry {info.name!r}: whiteout of nothing")
        try:
            os.stat(hidden, dir_fd=pfd, follow_symlinks=False)
            return  # a whiteout hides lower layers only, never its own layer's files
        except FileNotFoundError:
            pass
        os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        # Owner and time as the entry says, so that diffing this directory again is stable.
        os.chown(hidden, info.uid, info.gid, dir_fd=pfd, follow_symlinks=False)
        t = _ns(info.mtime)
        os.utime(hidden, ns=(t, t), dir_fd=pfd, follow_symlinks=False)

    def regular(self, parts: tuple[str, ...], info: tarfile.TarInfo) -> None:
        # Checked on the header, before writing: sparse entries expand beyond their
        # stream size, and a bomb should not be written at all.
        self.file_bytes += info.size
        if self.file_bytes > self.max_size:
            raise InvalidArgument(
                f"layer entry {info.name!r}: layer is larger than the limit of {self.max_size} bytes")
        pfd = self.tree.parent(parts[:-1], entry=info.name)
        self.tree.clear_name(pfd, parts, keep_dir=False)
        fd = os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            src = self.tf.extractfile(info)
            if src is None:  # cannot happen for a regular entry; keeps the type checker honest
                raise InvalidArgument(f"layer entry {info.name!r}: no data")
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while n := src.readinto(buf):
                off = 0
                while off < n:
                    off += os.write(fd, view[off:n])
            # chown before chmod: chown clears setuid/setgid bits.
            os.fchown(fd, info.uid, info.gid)
            os.fchmod(fd, info.mode & 0o7777)
            self.set_xattrs(fd, info)
            t = _ns(info.mtime)
            os.utime(fd, ns=(t, t))
        finally:
            os.close(fd)

    def hardlink(self, parts: tuple[str, ...], info: tarfile.TarInfo) -> None:
        target = split_entry_name(info.linkname)
        if not target:
            raise InvalidArgument(f"layer entry {info.name!r}: hardlink to the root")
        tfd = self.tree.walk(target[:-1], create=False, entry=info.name)
        try:
            try:
                st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                raise InvalidArgument(
                    f"layer entry {info.name!r}: hardlink target {info.linkname!r} does not exist") from None
            # A symlink is linked as itself (never followed), so it stays harmless data.
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise InvalidArgument(
                    f"layer entry {info.name!r}: hardlink target {info.linkname!r} is not a file")
            pfd = self.tree.parent(parts[:-1], entry=info.name)
            if target == parts:
                return
            self.tree.clear_name(pfd, parts, keep_dir=False)
            os.link(target[-1], parts[-1], src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def set_dir_meta(self, dfd: int, info: tarfile.TarInfo) -> None:
        os.fchown(dfd, info.uid, info.gid)
        os.fchmod(dfd, info.mode & 0o7777)
        self.set_xattrs(dfd, info)

    def set_xattrs(self, target: int | str, info: tarfile.TarInfo) -> None:
        for key, value in info.pax_headers.items():
            if not key.startswith(PAX_XATTR_PREFIX):
                continue
            attr = key[len(PAX_XATTR_PREFIX):]
            if not xattr_allowed(attr):
                continue
            # tarfile decoded the raw bytes with surrogateescape: this restores them.
            raw = value.encode("utf-8", "surrogateescape")
            try:
                if isinstance(target, int):
                    os.setxattr(target, attr, raw)
                else:
                    os.setxattr(target, attr, raw, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise

    def set_dir_times(self) -> None:
        """Directory mtimes last: creating their children changed them."""
        self.tree.invalidate()
        for parts, t in self.dir_times:
            if not parts:
                os.utime(self.tree.root_fd, ns=(t, t))
                continue
            try:
                fd = self.tree.walk(parts[:-1], create=False, entry="/".join(parts))
            except InvalidArgument:
                continue  # replaced by a later entry
            try:
                os.utime(parts[-1], ns=(t, t), dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)


def _ns(mtime: float) -> int:
    return int(mtime * 1_000_000_000) if isinstance(mtime, float) else int(mtime) * 1_000_000_000


def unpack_layer(
    src: BinaryIO,
    dest: Path,
    *,
    expected_diff_id: Digest | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> UnpackResult:
    """Unpack a gzip/zstd/plain layer tar from `src` into the new directory `dest`.

    `dest` must not exist; its parent must. On any error `dest` is removed again, so
    callers unpack into a staging name and rename it into place on success. Blocking:
    call it through `asyncio.to_thread`.
    """
    dest = Path(dest)
    try:
        os.mkdir(dest, 0o755)
    except FileExistsError as e:
        raise AlreadyExists(f"unpack destination {dest} already exists") from e
    try:
        os.chmod(dest, 0o755)  # a lowerdir root that only root can enter breaks containers
        return _unpack_into(src, dest, expected_diff_id, max_size, max_entries)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _unpack_into(src: BinaryIO, dest: Path, expected: Digest | None,
                 max_size: int, max_entries: int) -> UnpackResult:
    _, plain = open_decompressed(src)
    reader = _HashingReader(plain, max_size)
    buffered = io.BufferedReader(reader, buffer_size=256 << 10)
    root_fd = os.open(dest, _DIR_FLAGS)
    tree = _Tree(root_fd)
    try:
        try:
            tf = tarfile.TarFile(fileobj=buffered, mode="r", tarinfo=_SafeTarInfo,  # type: ignore[arg-type]
                                 encoding="utf-8", errors="surrogateescape")
            unpacker = _Unpacker(tree, tf, max_size, max_entries)
            unpacker.run()
            # The diff_id covers the whole stream, padding after the end marker included.
            while buffered.read(CHUNK):
                pass
        except tarfile.TarError as e:
            raise InvalidArgument(f"invalid layer tar: {e}") from e
    finally:
        tree.close()
        os.close(root_fd)
        plain.close()
    diff_id = reader.hasher.digest()
    if expected is not None and diff_id != expected:
        raise InvalidArgument(f"layer diff_id mismatch: expected {expected}, got {diff_id}",
                              detail_code="DIGEST_INVALID")
    return UnpackResult(diff_id=diff_id, size=reader.hasher.size, entries=unpacker.entries)
