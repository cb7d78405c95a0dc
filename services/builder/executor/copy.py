"""COPY and ADD: docker's source and destination rules, staged into a layer tree.

- a directory source copies its contents, not the directory itself;
- a file goes *into* the destination when it ends with `/` or is an existing
  directory of the stage, else it *becomes* the destination;
- globs match with `*`/`?`/`[...]` per path component, like filepath.Match; a
  source with a wildcard may match nothing (BuildKit's AllowEmptyWildcard), one
  without must exist;
- the destination's symlinks are followed inside the image, never out of it;
- `hidden` paths of the context (an ignored Dockerfile or `.dockerignore`,
  sent only for the builder to read) are never copied, nor what `--exclude`
  patterns match (relative to the source root, as BuildKit matches them);
- several sources (or a glob matching several) need a `dest/`;
- ADD extracts a local tar archive (plain, gzip, bzip2, xz) into the destination;
- everything is owned by 0:0 unless `--chown`, `--chmod` sets every mode.

The staged tree mirrors absolute paths (staged/app/x is /app/x); parents of
the destination that the stage already has keep their metadata in the layer.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shutil
import stat
import tarfile
from pathlib import Path

from shared.buildcontext import PatternMatcher
from shared.errors import InvalidArgument
from shared.layers.paths import follow_in_root
from services.builder.executor import rootfs
from services.builder.frontend.steps import CopyStep

_GLOB_RE = re.compile(r"[*?\[]")
_TAR_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def inside(root: Path, rel: str) -> Path:
    """`rel` under `root`, symlinks followed but never out of `root` (like BuildKit's fs.RootPath)."""
    def readlink(p: str) -> str | None:
        return os.readlink(root / p) if (root / p).is_symlink() else None

    return root / follow_in_root(rel, readlink)


def match_sources(root: Path, pattern: str, where: str,
                  hidden: frozenset[Path] = frozenset()) -> list[tuple[str, Path]]:
    """(name as matched, path) of what a source names; an error if a plain name is missing."""
    rel = posixpath.normpath("/" + pattern).lstrip("/")
    if not _GLOB_RE.search(rel):
        p = inside(root, rel)
        if not os.path.lexists(p) or p in hidden:
            raise InvalidArgument(f"{where}: failed to compute cache key: \"/{rel}\": not found "
                                  "(no such file in the build context or excluded by .dockerignore)")
        return [(rel, p)]
    parts = rel.split("/")
    found: list[tuple[str, Path]] = []

    def walk(base: Path, idx: int, prefix: str) -> None:
        if base in hidden:
            return
        if idx == len(parts):
            found.append((prefix, base))
            return
        part = parts[idx]
        if not _GLOB_RE.search(part):
            nxt = base / part
            if os.path.lexists(nxt):
                walk(nxt, idx + 1, f"{prefix}/{part}" if prefix else part)
            return
        try:
            names = sorted(os.listdir(base))
        except (NotADirectoryError, FileNotFoundError):
            return
        for n in names:
            if fnmatch.fnmatchcase(n, part):
                walk(base / n, idx + 1, f"{prefix}/{n}" if prefix else n)

    walk(root, 0, "")
    return found


def _is_archive(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return False
    if head.startswith(_TAR_MAGIC):
        return True
    return tarfile.is_tarfile(path)


class Stager:
    """Builds the staged tree for one COPY/ADD."""

    def __init__(self, staged: Path, dest_lowers: list[Path], uid: int, gid: int, chmod: int | None,
                 link_ok: bool, hidden: frozenset[Path] = frozenset(), src_root: Path | None = None,
                 exclude: tuple[str, ...] = ()):
        self.staged, self.lowers = staged, dest_lowers
        self.uid, self.gid, self.chmod = uid, gid, chmod
        self.link_ok = link_ok  # hard links are fine from a private, never-modified context dir
        self.hidden = hidden
        self.src_root = src_root
        self.exclude = PatternMatcher(list(exclude)) if exclude else None
        self.entries = 0

    def ensure_dir(self, abs_path: str) -> Path:
        """Create `abs_path` in the staged tree, parents first, with the stage's metadata."""
        parts = [p for p in abs_path.strip("/").split("/") if p]
        cur = self.staged
        sofar = ""
        for name in parts:
            sofar += "/" + name
            cur = cur / name
            if cur.is_dir() and not cur.is_symlink():
                continue
            existing = rootfs.lookup(self.lowers, sofar)
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                raise InvalidArgument(f"cannot copy to {abs_path}: {sofar} is not a directory in the image")
            os.mkdir(cur)
            if existing is not None:
                os.chown(cur, existing.st_uid, existing.st_gid)
                os.chmod(cur, stat.S_IMODE(existing.st_mode))
                os.utime(cur, ns=(existing.st_mtime_ns, existing.st_mtime_ns))
            else:
                os.chown(cur, self.uid, self.gid)
                os.chmod(cur, 0o755)
                os.utime(cur, (0, 0))
        return cur

    def dest_is_dir(self, abs_path: str) -> bool:
        st = rootfs.lookup(self.lowers, abs_path)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def _meta(self, path: Path, src_st: os.stat_result) -> None:
        os.chown(path, self.uid, self.gid, follow_symlinks=False)
        if not stat.S_ISLNK(src_st.st_mode):
            mode = self.chmod if self.chmod is not None else stat.S_IMODE(src_st.st_mode)
            os.chmod(path, mode)
        os.utime(path, ns=(src_st.st_mtime_ns, src_st.st_mtime_ns), follow_symlinks=False)

    def skipped(self, src: Path) -> bool:
        if src in self.hidden:
            return True
        return (self.exclude is not None and self.src_root is not None
                and self.exclude.matches(os.path.relpath(src, self.src_root)))

    def copy_entry(self, src: Path, dst: Path) -> None:
        if self.skipped(src):
            return
        st = os.lstat(src)
        self.entries += 1
        if stat.S_ISDIR(st.st_mode):
            if not dst.is_dir():
                os.mkdir(dst)
            for name in sorted(os.listdir(src)):
                self.copy_entry(src / name, dst / name)
            self._meta(dst, st)
        elif stat.S_ISLNK(st.st_mode):
            if os.path.lexists(dst):
                os.unlink(dst)
            os.symlink(os.readlink(src), dst)
            self._meta(dst, st)
        elif stat.S_ISREG(st.st_mode):
            if os.path.lexists(dst):
                os.unlink(dst)
            if self.link_ok and self.chmod is None and st.st_uid == self.uid and st.st_gid == self.gid:
                try:
                    os.link(src, dst)
                    return
                except OSError:
                    pass
            shutil.copyfile(src, dst, follow_symlinks=False)
            self._meta(dst, st)
        # sockets, fifos and devices are not copied, as with docker

    def extract(self, archive: Path, dest_dir: Path) -> None:
        try:
            with tarfile.open(archive, "r:*") as tf:
                # The "tar" filter refuses absolute names, `..`, and links out of dest.
                tf.extractall(dest_dir, filter="tar")
        except (tarfile.TarError, OSError) as e:
            raise InvalidArgument(f"ADD: cannot extract {archive.name}: {e}") from e
        for dirpath, dirnames, filenames in os.walk(dest_dir):
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                os.chown(p, self.uid, self.gid, follow_symlinks=False)
                self.entries += 1


def stage_copy(step: CopyStep, src_root: Path, dest_lowers: list[Path], staged: Path,
               uid: int, gid: int, *, link_ok: bool, hidden: frozenset[Path] = frozenset()) -> int:
    """Stage what `step` copies from `src_root` into `staged`; the number of entries."""
    where = step.src.where(step.name)
    s = Stager(staged, dest_lowers, uid, gid, step.chmod, link_ok, hidden, src_root, step.exclude)
    matches: list[tuple[str, Path]] = []
    for pattern in step.sources:
        matches.extend(m for m in match_sources(src_root, pattern, where, hidden) if not s.skipped(m[1]))
    dest = rootfs.resolve(dest_lowers, step.dest)
    if step.dest.endswith("/") and dest != "/":
        dest += "/"
    into_dir = dest.endswith("/") or s.dest_is_dir(dest)
    if len(matches) + len(step.inline) > 1 and not into_dir:
        raise InvalidArgument(f"{where}: When using {step.name} with more than one source file, "
                              "the destination must be a directory and end with a /")
    for name, matched in matches:
        # The named source is followed if it is a symlink, but only inside its root.
        path = inside(src_root, name)
        if not os.path.lexists(path):
            raise InvalidArgument(f"{where}: {name}: symlink to nothing")
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            target = s.ensure_dir(dest)
            for child in sorted(os.listdir(path)):
                s.copy_entry(path / child, target / child)
        elif step.is_add and step.from_context and _is_archive(path):
            s.extract(path, s.ensure_dir(dest))
        else:
            if into_dir:
                target = s.ensure_dir(dest) / posixpath.basename(name)
            else:
                target = s.ensure_dir(posixpath.dirname(dest.rstrip("/")) or "/") / posixpath.basename(dest)
            s.copy_entry(path, target)
    for inline in step.inline:
        target = (s.ensure_dir(dest) / inline.name) if into_dir else (
            s.ensure_dir(posixpath.dirname(dest) or "/") / posixpath.basename(dest))
        target.write_bytes(inline.content)
        os.chown(target, uid, gid)
        os.chmod(target, step.chmod if step.chmod is not None else 0o644)
        os.utime(target, (0, 0))
        s.entries += 1
    return s.entries
