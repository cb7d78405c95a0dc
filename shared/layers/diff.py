"""Turn a directory (an overlay upperdir, or a staged COPY) into a reproducible layer blob.

One pass: tar headers and file bytes go through the uncompressed hasher (diff_id),
the compressor, then the compressed hasher (blob digest) into `out`. The output is
never read back. Reproducible: entries sorted (whiteouts first in each directory, as
the image-spec asks), numeric ids without names, whole-second mtimes optionally
clamped to SOURCE_DATE_EPOCH, PAX headers only where ustar cannot say it, and a gzip
header without name or time.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.errors import InvalidArgument
from shared.layers.compression import CHUNK, Compression, media_type, open_compressor
from shared.layers.conventions import (
    OPAQUE_WHITEOUT,
    OVERLAY_OPAQUE_XATTR,
    PAX_XATTR_PREFIX,
    WHITEOUT_PREFIX,
    xattr_allowed,
)
from shared.layers.unpack import split_entry_name
from shared.oci.digest import Digest, Hasher


@dataclass(frozen=True, slots=True)
class LayerResult:
    digest: Digest  # of the blob as written (compressed)
    size: int  # bytes written to `out`
    diff_id: Digest  # of the uncompressed tar
    media_type: str
    entries: int

    @property
    def is_empty(self) -> bool:
        """No entries: builders record the step without a layer, like BuildKit."""
        return self.entries == 0


class _HashingSink:
    """Hashes and counts what passes through, batching small writes into big ones."""

    def __init__(self, out: BinaryIO):
        self._out = out
        self._buf = bytearray()
        self.hasher = Hasher("sha256")

    def write(self, b) -> int:
        n = len(b)
        if self._buf and len(self._buf) + n > CHUNK:
            self._flush_buf()
        if n >= CHUNK:
            self._emit(b)
        else:
            self._buf += b
        return n

    def tell(self) -> int:
        return self.hasher.size + len(self._buf)

    def flush(self) -> None:
        self._flush_buf()

    def _flush_buf(self) -> None:
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()

    def _emit(self, b) -> None:
        self.hasher.update(b)
        self._out.write(b)


def has_changes(src_dir: Path) -> bool:
    """True if the directory holds anything a layer would carry (cheaper than writing one)."""
    with os.scandir(src_dir) as it:
        return any(not stat.S_ISSOCK(e.stat(follow_symlinks=False).st_mode) for e in it)


def write_layer(
    src_dir: Path,
    out: BinaryIO,
    *,
    compression: Compression | str = "gzip",
    base_path: str = "",
    source_date_epoch: int | None = None,
    level: int | None = None,
) -> LayerResult:
    """Write `src_dir` as a layer into `out` (left open), entries placed under `base_path`.

    Overlay whiteouts (0/0 char devices) become `.wh.NAME`, opaque directories get a
    `.wh..wh..opq` entry. With `base_path`, `src_dir` itself becomes that directory's
    entry (its parents are left implicit). Blocking: call it through `asyncio.to_thread`.
    """
    comp = Compression.parse(compression)
    src_dir = Path(src_dir)
    base = split_entry_name(base_path.strip("/")) if base_path.strip("/") else ()
    try:
        root_st = os.stat(src_dir, follow_symlinks=False)
    except FileNotFoundError as e:
        raise InvalidArgument(f"layer source {src_dir} does not exist") from e
    if not stat.S_ISDIR(root_st.st_mode):
        raise InvalidArgument(f"layer source {src_dir} is not a directory")

    blob = _HashingSink(out)
    compressor = open_compressor(blob, comp, level) if comp is not Compression.NONE else None
    tar_sink = _HashingSink(compressor if compressor is not None else out)
    writer = _Writer(tar_sink, source_date_epoch)
    try:
        if base:
            writer.add(str(src_dir), "/".join(base), root_st)
        writer.add_tree(str(src_dir), "/".join(base), root_st)
        writer.close()
        tar_sink.flush()
    finally:
        if compressor is not None:
            compressor.close()
    blob.flush()
    out.flush()
    diff_id = tar_sink.hasher.digest()
    if compressor is None:
        digest, size = diff_id, tar_sink.hasher.size
    else:
        digest, size = blob.hasher.digest(), blob.hasher.size
    return LayerResult(digest=digest, size=size, diff_id=diff_id,
                       media_type=media_type(comp), entries=writer.entries)


class _Writer:
    def __init__(self, sink: _HashingSink, source_date_epoch: int | None):
        self.tf = tarfile.TarFile(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[arg-type]
                                  encoding="utf-8", errors="surrogateescape", copybufsize=CHUNK)
        self.sde = source_date_epoch
        self.entries = 0
        self.links: dict[tuple[int, int], str] = {}

    def close(self) -> None:
        self.tf.close()

    def add_tree(self, dir_path: str, tar_dir: str, dir_st: os.stat_result) -> None:
        children: list[tuple[bool, bytes, str, os.stat_result]] = []
        with os.scandir(dir_path) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                children.append((not _is_whiteout(st), os.fsencode(e.name), e.name, st))
        if _is_opaque(dir_path):
            self._emit(_info(_join(tar_dir, OPAQUE_WHITEOUT), dir_st, self.sde,
                             type_=tarfile.REGTYPE, mode=stat.S_IMODE(dir_st.st_mode) & 0o777))
        children.sort(key=lambda c: (c[0], c[1]))
        for _, _, name, st in children:
            path = os.path.join(dir_path, name)
            tar_name = _join(tar_dir, name)
            self.add(path, tar_name, st)
            if stat.S_ISDIR(st.st_mode):
                self.add_tree(path, tar_name, st)

    def add(self, path: str, tar_name: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self._emit(_info(tar_name, st, self.sde, type_=tarfile.DIRTYPE), path)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                self._emit(_info(tar_name, st, self.sde, type_=tarfile.LNKTYPE, linkname=self.links[key]))
                return
            if st.st_nlink > 1:
                self.links[key] = tar_name
            info = _info(tar_name, st, self.sde, type_=tarfile.REGTYPE)
            info.size = st.st_size
            # O_NOFOLLOW: the directory may belong to a container that was just running.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "rb", buffering=0) as f:
                self._emit(info, path, f)
        elif stat.S_ISLNK(mode):
            self._emit(_info(tar_name, st, self.sde, type_=tarfile.SYMTYPE, linkname=os.readlink(path)), path)
        elif _is_whiteout(st):
            parent, _, base = tar_name.rpartition("/")
            self._emit(_info(_join(parent, WHITEOUT_PREFIX + base), st, self.sde,
                             type_=tarfile.REGTYPE, mode=0o600))
        elif stat.S_ISSOCK(mode):
            return  # a leftover of a process that ran; docker and BuildKit drop them too
        else:
            raise InvalidArgument(f"{path}: device nodes and FIFOs cannot go into a layer")

    def _emit(self, info: tarfile.TarInfo, xattr_path: str | None = None, data: BinaryIO | None = None) -> None:
        if xattr_path is not None:
            _add_xattrs(info, xattr_path)
        self.tf.addfile(info, data)
        self.tf.members.clear()  # streaming: tarfile would keep every header
        self.entries += 1


def _info(name: str, st: os.stat_result, sde: int | None, *, type_: bytes,
          linkname: str = "", mode: int | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = stat.S_IMODE(st.st_mode) if mode is None else mode
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    mtime = int(st.st_mtime)
    info.mtime = min(mtime, sde) if sde is not None else mtime
    return info


def _add_xattrs(info: tarfile.TarInfo, path: str) -> None:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for attr in sorted(names):
        if not xattr_allowed(attr):
            continue
        value = os.getxattr(path, attr, follow_symlinks=False)
        # surrogateescape keeps binary values (security.capability) byte-exact.
        info.pax_headers[PAX_XATTR_PREFIX + attr] = value.decode("utf-8", "surrogateescape")


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name
