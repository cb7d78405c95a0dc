"""Build layer tars in tests, hostile ones included (tarfile writes names as given)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import zstandard


def entry(name: str, kind: str = "file", data: bytes = b"", *, link: str = "", mode: int | None = None,
          uid: int = 0, gid: int = 0, mtime: int = 1_700_000_000, dev: tuple[int, int] = (0, 0),
          pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
             "fifo": tarfile.FIFOTYPE}
    ti = tarfile.TarInfo(name)
    ti.type = types[kind]
    ti.linkname = link
    ti.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
    ti.uid, ti.gid, ti.mtime = uid, gid, mtime
    ti.devmajor, ti.devminor = dev
    ti.size = len(data) if kind == "file" else 0
    if pax:
        ti.pax_headers = dict(pax)
    return ti, data


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes]], *, trailer: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)
    return buf.getvalue() + trailer


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, compresslevel=1)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tree_state(root: Path) -> dict[str, tuple]:
    """Everything observable about a tree (for "nothing outside was touched")."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            content = b""
            if os.path.isfile(p) and not os.path.islink(p):
                content = Path(p).read_bytes()
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_mtime_ns, st.st_nlink, content)
    return out
