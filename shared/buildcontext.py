"""Build contexts: `.dockerignore` rules, packing a context dir to a tar, unpacking it safely.

The pattern rules are a port of moby's `patternmatcher` and of the docker CLI's
context walk (`archive.TarWithOptions`), so that a context sends exactly the
files `docker build` would send:

- a line starting with `#` is a comment; lines are trimmed; `!` re-includes;
- patterns are `filepath.Clean`ed and a leading `/` is dropped;
- `*` and `?` never cross `/`, `**` spans any number of directories;
- the last matching pattern wins, and a pattern that matches a directory
  excludes everything below it;
- the Dockerfile and `.dockerignore` are always sent.

The tar is deterministic (sorted entries, uid/gid 0, mtime 0, no user names),
so an unchanged context has the same digest and need not be uploaded again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import stat
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Iterator

from shared.errors import InvalidArgument

if TYPE_CHECKING:
    import tarfile  # imported where used: a warm `dockyard build` packs no tar

DOCKERIGNORE = ".dockerignore"
_REGEX_SPECIAL = set(".+()|{}$")
_CHUNK = 1 << 20
EXTERNAL_MIN = 1 << 20  # files this big travel as blobs of their own (see pack_context)
EXTERNAL_BLOB = "DOCKYARD.blob"
EXTERNAL_SIZE = "DOCKYARD.size"


# --------------------------------------------------------------------------- patterns


def read_dockerignore(text: str) -> list[str]:
    """Patterns of a `.dockerignore` file, normalised as moby's `ignorefile.ReadAll`."""
    out: list[str] = []
    for n, raw in enumerate(text.splitlines()):
        if n == 0:
            raw = raw.lstrip("\ufeff")
        if raw.startswith("#"):
            continue
        pattern = raw.strip()
        if not pattern:
            continue
        invert = pattern[0] == "!"
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = _clean(pattern)
            if len(pattern) > 1 and pattern[0] == "/":
                pattern = pattern[1:]
        out.append("!" + pattern if invert else pattern)
    return out


def _clean(path: str) -> str:
    """Go's `filepath.Clean` (posixpath.normpath keeps a leading `//`)."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


@dataclass(frozen=True)
class Pattern:
    """One compiled pattern; `kind` mirrors moby's exact/prefix/suffix/regexp match types."""

    text: str
    exclusion: bool
    kind: str
    regex: re.Pattern[str] | None

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None


def _compile(text: str, exclusion: bool) -> Pattern:
    """moby's `Pattern.compile`: a glob to an anchored regexp, `**` spanning dirs."""
    out = ["^"]
    kind = "exact"
    i, n, step = 0, len(text), 0
    while i < n:
        ch = text[i]
        i += 1
        if ch == "*":
            if i < n and text[i] == "*":
                i += 1
                if i < n and text[i] == "/":  # `**/` is `**`
                    i += 1
                if i >= n:  # trailing `**` takes everything, as in .gitignore
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        out.append(".*")
                        kind = "regexp"
                else:
                    out.append("(.*/)?")
                    kind = "regexp"
                if step == 0:
                    kind = "suffix"
            else:
                out.append("[^/]*")
                kind = "regexp"
        elif ch == "?":
            out.append("[^/]")
            kind = "regexp"
        elif ch in _REGEX_SPECIAL:
            out.append("\\" + ch)
        elif ch == "\\":
            if i < n:
                out.append("\\" + text[i])
                i += 1
                kind = "regexp"
            else:
                out.append("\\\\")
        elif ch in "[]":
            out.append(ch)
            kind = "regexp"
        else:
            out.append(ch)
        step += 1
    if kind != "regexp":
        return Pattern(text, exclusion, kind, None)
    out.append("$")
    try:
        return Pattern(text, exclusion, kind, re.compile("".join(out), re.DOTALL))
    except re.error as exc:
        raise InvalidArgument(f".dockerignore: bad pattern {text!r}: {exc}") from exc


class PatternMatcher:
    """An ordered list of include/exclude patterns; the last match wins."""

    def __init__(self, patterns: list[str]):
        self.patterns: list[Pattern] = []
        for p in patterns:
            p = p.strip()
            if not p:
                continue
            p = _clean(p)
            exclusion = p[0] == "!"
            if exclusion:
                if len(p) == 1:
                    raise InvalidArgument('.dockerignore: illegal exclusion pattern: "!"')
                p = p[1:]
            self.patterns.append(_compile(p, exclusion))

    @property
    def has_exclusions(self) -> bool:
        return any(p.exclusion for p in self.patterns)

    def matches(self, path: str) -> bool:
        """True if `path` (slash-separated, relative) is excluded, by itself or by a parent."""
        matched = False
        parent = posixpath.dirname(path) or "."
        parent_dirs = parent.split("/")
        for pat in self.patterns:
            # An include pattern cannot change an already excluded path, nor an
            # exception a path not yet excluded: skip them (moby does the same).
            if pat.exclusion != matched:
                continue
            hit = pat.match(path)
            if not hit and parent != ".":
                for i in range(len(parent_dirs)):
                    if pat.match("/".join(parent_dirs[: i + 1])):
                        hit = True
                        break
            if hit:
                matched = not pat.exclusion
        return matched

    def may_reinclude_below(self, dir_path: str) -> bool:
        """Whether an exception could re-include something under an excluded dir.

        The CLI's walk only descends into an excluded directory when an
        exception pattern starts with that directory's path.
        """
        prefix = dir_path + "/"
        return any(p.exclusion and (p.text + "/").startswith(prefix) for p in self.patterns)


def context_excludes(ignore_text: str | None, dockerfile: str = "Dockerfile") -> list[str]:
    """The patterns for a context, with the Dockerfile and `.dockerignore` always kept."""
    excludes = read_dockerignore(ignore_text) if ignore_text else []
    if not excludes:
        return excludes
    pm = PatternMatcher(excludes)
    if pm.matches(DOCKERIGNORE):
        excludes.append("!" + DOCKERIGNORE)
    dockerfile = dockerfile.replace(os.sep, "/")
    if PatternMatcher(excludes).matches(dockerfile):
        excludes.append("!" + dockerfile)
    return excludes


# --------------------------------------------------------------------------- packing


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


# --------------------------------------------------------------------------- unpacking


@dataclass
class ContextIndex:
    """What an unpacked context holds: content digests keyed by relative path."""

    root: str
    files: dict[str, str] = field(default_factory=dict)  # rel path -> sha256 digest
    links: dict[str, str] = field(default_factory=dict)  # rel path -> symlink target
    dirs: set[str] = field(default_factory=set)
    # rel path -> (digest, size, mode) of files named by digest, not yet in place (see pack_context)
    external: dict[str, tuple[str, int, int]] = field(default_factory=dict)


def _safe_rel(name: str) -> str:
    rel = posixpath.normpath(name.lstrip("/"))
    if rel in ("", ".") or rel == ".." or rel.startswith("../") or "\0" in rel:
        raise InvalidArgument(f"context: unsafe path {name!r}")
    return rel


def unpack_context(src: BinaryIO, dest: str, donor: ContextIndex | None = None) -> ContextIndex:
    """Unpack a context tar into `dest`, hashing files as they are written.

    The stream is untrusted: paths that leave `dest`, entries under a symlink,
    devices and hard links to outside are refused; nothing is written through
    a symlink (O_NOFOLLOW, and parents are checked against the links made).

    `donor`, an earlier unpacked context (immutable, like this one), lends its
    small files: one whose path, content digest and mode are the same here is
    hard-linked, not written. Creating a file costs ~30 times a link, and a
    rebuild after a one-file edit would otherwise write the whole context again.
    """
    import tarfile
    os.makedirs(dest, exist_ok=True)
    index = ContextIndex(root=dest)
    try:
        tf = tarfile.open(fileobj=src, mode="r|")
    except tarfile.TarError as exc:
        raise InvalidArgument(f"context: not a tar stream: {exc}") from exc
    with tf:
        for ti in tf:
            rel = _safe_rel(ti.name)
            parent = posixpath.dirname(rel)
            probe = parent
            while probe:
                if probe in index.links:
                    raise InvalidArgument(f"context: {rel!r} lies under symlink {probe!r}")
                probe = posixpath.dirname(probe)
            if parent and parent not in index.dirs:
                _mkdirs(dest, parent, index)
            path = os.path.join(dest, rel)
            if ti.isdir():
                if rel not in index.dirs:
                    os.makedirs(path, exist_ok=True)
                    index.dirs.add(rel)
                os.chmod(path, (ti.mode & 0o7777) | 0o700)
            elif ti.issym():
                os.symlink(ti.linkname, path)
                index.links[rel] = ti.linkname
            elif ti.isreg() and EXTERNAL_BLOB in ti.pax_headers:
                digest = ti.pax_headers[EXTERNAL_BLOB]
                if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                    raise InvalidArgument(f"context: bad blob digest for {rel!r}")
                try:
                    size = int(ti.pax_headers.get(EXTERNAL_SIZE, ""))
                except ValueError as exc:
                    raise InvalidArgument(f"context: bad blob size for {rel!r}") from exc
                index.external[rel] = (digest, size, ti.mode & 0o7777)
                index.files[rel] = digest
            elif ti.isreg() and donor is not None and rel in donor.files and ti.size <= _CHUNK:
                index.files[rel] = _link_or_write(tf.extractfile(ti), path, ti.mode, donor, rel)
            elif ti.isreg():
                index.files[rel] = _write_file(tf.extractfile(ti), path, ti.mode)
            elif ti.islnk():
                target = _safe_rel(ti.linkname)
                if target not in index.files:
                    raise InvalidArgument(f"context: hard link {rel!r} to unknown {target!r}")
                os.link(os.path.join(dest, target), path, follow_symlinks=False)
                index.files[rel] = index.files[target]
            else:
                raise InvalidArgument(f"context: unsupported entry type for {rel!r}")
    return index


def _mkdirs(dest: str, rel: str, index: ContextIndex) -> None:
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if sub not in index.dirs:
            os.makedirs(os.path.join(dest, sub), exist_ok=True)
            index.dirs.add(sub)


def _link_or_write(f: BinaryIO | None, path: str, mode: int, donor: ContextIndex, rel: str) -> str:
    data = f.read() if f is not None else b""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if donor.files.get(rel) == digest and rel not in donor.external:
        other = os.path.join(donor.root, rel)
        try:
            st = os.lstat(other)
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == mode & 0o7777 and st.st_size == len(data):
                os.link(other, path, follow_symlinks=False)
                return digest
        except OSError:
            pass  # the donor was evicted meanwhile: write it
    return _write_file(io.BytesIO(data), path, mode)


def _write_file(f: BinaryIO | None, path: str, mode: int) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o7777)
    with os.fdopen(fd, "wb") as out:
        if f is not None:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
    os.chmod(path, mode & 0o7777)
    return "sha256:" + h.hexdigest()
