"""Unpacking an uploaded context safely on the builder, reusing an earlier one's files."""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from typing import BinaryIO

from shared.errors import InvalidArgument

from shared.buildcontext.pack import _CHUNK, EXTERNAL_BLOB, EXTERNAL_SIZE


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
