"""Packing a context dir into the deterministic tar the CLI uploads, and remembering it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import time
from typing import TYPE_CHECKING, BinaryIO, Iterator

from shared.errors import InvalidArgument

if TYPE_CHECKING:
    import tarfile  # imported where used: a warm `dockyard build` packs no tar

from shared.buildcontext.ignore import PatternMatcher

_CHUNK = 1 << 20
EXTERNAL_MIN = 1 << 20  # files this big travel as blobs of their own (see pack_context)
EXTERNAL_BLOB = "DOCKYARD.blob"
EXTERNAL_SIZE = "DOCKYARD.size"


def walk_context(root: str, excludes: list[str]) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every entry sent, sorted, parents before children."""
    pm = PatternMatcher(excludes)

    def walk(rel_dir: str) -> Iterator[tuple[str, os.stat_result]]:
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            names = sorted(os.listdir(abs_dir))
        except OSError as exc:
            raise InvalidArgument(f"cannot read context dir {abs_dir}: {exc}") from exc
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            st = os.lstat(os.path.join(root, rel))
            is_dir = stat.S_ISDIR(st.st_mode)
            if pm.patterns and pm.matches(rel):
                if is_dir and pm.may_reinclude_below(rel):
                    yield from walk(rel)  # the dir itself stays out, as in the CLI
                continue
            yield rel, st
            if is_dir:
                yield from walk(rel)

    yield from walk("")


def _tarinfo(rel: str, st: os.stat_result, root: str) -> tarfile.TarInfo:
    import tarfile
    ti = tarfile.TarInfo(rel)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0
    if stat.S_ISDIR(st.st_mode):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        ti.type = tarfile.SYMTYPE
        ti.linkname = os.readlink(os.path.join(root, rel))
    elif stat.S_ISREG(st.st_mode):
        ti.type = tarfile.REGTYPE
        ti.size = st.st_size
    else:
        raise InvalidArgument(f"context: unsupported file type for {rel}")
    return ti


def pack_context(root: str, out: BinaryIO, excludes: list[str], *,
                 external: dict[str, str] | None = None, external_min: int = EXTERNAL_MIN,
                 digests: "DigestCache | None" = None) -> tuple[str, int]:
    """Write the context as a deterministic tar to `out`; returns (sha256 digest, size).

    With `external` given, regular files of `external_min` bytes or more are not
    inlined: the tar names them by content digest (PAX `DOCKYARD.blob`, no data)
    and `external` maps each digest to the file's path, for the caller to upload
    as blobs of their own. The context's digest still covers their content, and
    an unchanged big file is not sent again when a small one changes. `digests`
    remembers those files' digests by stat, so an unchanged one is not re-read.
    """
    import tarfile
    hw = _HashingWriter(out)
    hashed: set[str] = set()
    with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for rel, st in walk_context(root, excludes):
            if stat.S_ISSOCK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                continue  # docker skips sockets and pipes too
            ti = _tarinfo(rel, st, root)
            if ti.type == tarfile.REGTYPE and external is not None and ti.size >= external_min:
                path = os.path.join(root, rel)
                digest = digests.digest(path, st) if digests is not None else _file_digest(path)
                hashed.add(path)
                ti.pax_headers = {EXTERNAL_BLOB: digest, EXTERNAL_SIZE: str(ti.size)}
                ti.size = 0
                external[digest] = path
                tf.addfile(ti)
            elif ti.type == tarfile.REGTYPE:
                with open(os.path.join(root, rel), "rb") as f:
                    tf.addfile(ti, f)
            else:
                tf.addfile(ti)
    if digests is not None:
        digests.retain(hashed)
    return "sha256:" + hw.hash.hexdigest(), hw.size


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


_RACY_NS = 2_000_000_000  # file times this close to the hash may hide a later same-tick write


def _stat_key(st: os.stat_result) -> list:
    return [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _racy(st: os.stat_result, start_ns: int) -> bool:
    return start_ns - max(st.st_mtime_ns, st.st_ctime_ns) <= _RACY_NS


def context_signature(root: str, excludes: list[str], external_min: int = EXTERNAL_MIN) -> tuple[str, bool]:
    """A digest of the stat of every entry `pack_context` would send, and whether one is racy.

    Equal signatures mean an unchanged context (see DigestCache), so its tar
    need not be written nor hashed again; a racy one must not be remembered.
    """
    start = time.time_ns()
    h = hashlib.sha256(json.dumps([root, excludes, external_min]).encode())
    racy = False
    for rel, st in walk_context(root, excludes):
        h.update(json.dumps([rel, *_stat_key(st)]).encode())
        racy = racy or _racy(st, start)
    return h.hexdigest(), racy


class DigestCache:
    """What a context held when last packed, trusted while its stat is unchanged (git's index).

    Two records: each big file's content digest, and the last packed context
    (its signature, tar digest and size, and the big files it names). The key
    is (mode, size, mtime_ns, ctime_ns, inode, dev): an edit changes mtime and
    ctime, restoring the mtime (`touch -d`) still moves ctime, replacing the
    file changes the inode. As in git, a stat whose times are within `_RACY_NS`
    of the hash is not kept: timestamps are coarse (a kernel tick), so a write
    later in the same tick would leave the stat as it was. A lost or corrupt
    cache only costs a re-hash; it is rewritten atomically.
    """

    def __init__(self, path: str | None):
        self.path = path
        self.files: dict[str, list] = {}  # path -> [stat key, digest]
        self.last: dict = {}  # signature, digest, size, external
        self.dirty = False
        if path:
            try:
                with open(path, "rb") as f:
                    loaded = json.load(f)
                if isinstance(loaded, dict) and isinstance(loaded.get("files"), dict):
                    self.files = loaded["files"]
                    self.last = loaded.get("context") if isinstance(loaded.get("context"), dict) else {}
            except (OSError, ValueError):
                pass

    def digest(self, path: str, st: os.stat_result) -> str:
        key = _stat_key(st)
        hit = self.files.get(path)
        if isinstance(hit, list) and len(hit) == 2 and hit[0] == key:
            return hit[1]
        start = time.time_ns()
        digest = _file_digest(path)
        stable = _stat_key(os.lstat(path)) == key  # not written to while we read it
        if stable and not _racy(st, start):
            self.files[path] = [key, digest]
            self.dirty = True
        elif self.files.pop(path, None) is not None:
            self.dirty = True
        return digest

    def retain(self, paths: set[str]) -> None:
        """Forget files no longer in the context (the cache stays the context's size)."""
        for p in set(self.files) - paths:
            del self.files[p]
            self.dirty = True

    def packed(self, signature: str) -> tuple[str, int, dict[str, str]] | None:
        """(digest, size, external) of the context last packed with this signature."""
        last = self.last
        if last.get("signature") != signature:
            return None
        try:
            return str(last["digest"]), int(last["size"]), {str(k): str(v) for k, v in last["external"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def remember(self, signature: str, digest: str, size: int, external: dict[str, str]) -> None:
        self.last = {"signature": signature, "digest": digest, "size": size, "external": dict(external)}
        self.dirty = True

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"files": self.files, "context": self.last}, f)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass  # a cache we cannot write is a cache we do without


class _HashingWriter(io.RawIOBase):
    def __init__(self, out: BinaryIO):
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.hash.update(b)
        self.out.write(b)
        self.size += len(b)
        return len(b)
