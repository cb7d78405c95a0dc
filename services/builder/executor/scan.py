"""What ships in each layer: secrets that look like secrets, and bytes a later layer hides.

A layer's `LayerIndex` is made once from its snapshot (or its tar) and kept
with its cache record, so a build that hits the cache everywhere still warns
without reading a layer. `analyse` folds the indexes of an image in order:
a whiteout or an overwrite of a file that an earlier layer ships is wasted
space (the "BigFile" case: `RUN rm big` does not make the image smaller).
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

import msgspec

from shared.layers.conventions import OPAQUE_WHITEOUT, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX

MIN_INDEXED = 1024  # files smaller than this are not worth a waste report
MAX_INDEXED = 4000  # keep a cache record well under the KV's message limit
WASTE_WARN = 1 << 20
_SCAN_LIMIT = 256 * 1024  # content-scan files up to this size

_SECRET_NAMES = re.compile(
    r"(^|/)(id_(rsa|dsa|ecdsa|ed25519)|\.env(\.[\w.-]+)?|\.npmrc|\.pypirc|\.netrc|\.git-credentials|"
    r"\.aws/credentials|\.docker/config\.json|\.dockercfg|[^/]+\.(p12|pfx|kdbx))$")
_SECRET_CONTENT = [
    (re.compile(rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY( BLOCK)?-----"), "a private key"),
    (re.compile(rb"\bAKIA[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(rb"\bgh[pousr]_[A-Za-z0-9]{36}\b"), "a GitHub token"),
    (re.compile(rb"\bgithub_pat_[A-Za-z0-9_]{40,}"), "a GitHub token"),
    (re.compile(rb"\bglpat-[A-Za-z0-9_-]{20}\b"), "a GitLab token"),
    (re.compile(rb"\bxox[baprs]-[A-Za-z0-9-]{10,}"), "a Slack token"),
    (re.compile(rb"\bsk_live_[A-Za-z0-9]{16,}"), "a Stripe key"),
    (re.compile(rb"_authToken\s*=\s*\S{8,}"), "an npm auth token"),
]


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    reason: str
    size: int = 0


class LayerIndex(msgspec.Struct, kw_only=True):
    files: dict[str, int] = {}  # path -> size, for files >= MIN_INDEXED
    whiteouts: list[str] = []  # paths this layer deletes
    opaque: list[str] = []  # dirs whose lower contents this layer hides
    secrets: list[Finding] = []
    size: int = 0  # bytes of regular files the layer holds


class _Builder:
    def __init__(self) -> None:
        self.idx = LayerIndex(files={}, whiteouts=[], opaque=[], secrets=[])

    def file(self, path: str, size: int, head: bytes | None) -> None:
        self.idx.size += size
        if size >= MIN_INDEXED:
            self.idx.files[path] = size
        reason = None
        if _SECRET_NAMES.search(path):
            reason = "its name is one that holds credentials"
        elif head:
            reason = next((why for rx, why in _SECRET_CONTENT if rx.search(head)), None)
            reason = f"it contains {reason}" if reason else None
        if reason:
            self.idx.secrets.append(Finding(path=path, reason=reason, size=size))

    def done(self) -> LayerIndex:
        if len(self.idx.files) > MAX_INDEXED:
            keep = sorted(self.idx.files.items(), key=lambda kv: kv[1], reverse=True)[:MAX_INDEXED]
            self.idx.files = dict(keep)
        return self.idx


def _head(path: Path | str, size: int) -> bytes | None:
    if size > _SCAN_LIMIT or size == 0:
        return None
    try:
        with open(path, "rb") as f:
            return f.read(_SCAN_LIMIT)
    except OSError:
        return None


def index_snapshot(root: Path) -> LayerIndex:
    """Index a layer in its overlay form (whiteouts are 0/0 devices, opaque dirs an xattr)."""
    b = _Builder()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in dirnames:
            p = os.path.join(dirpath, name)
            try:
                if os.getxattr(p, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y":
                    b.idx.opaque.append("/" + os.path.join(rel_dir, name))
            except OSError:
                pass
        for name in filenames:
            p = os.path.join(dirpath, name)
            rel = "/" + os.path.join(rel_dir, name)
            st = os.lstat(p)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                b.idx.whiteouts.append(rel)
            elif stat.S_ISREG(st.st_mode):
                b.file(rel, st.st_size, _head(p, st.st_size))
    return b.done()


def index_tar(stream: BinaryIO) -> LayerIndex:
    """Index a layer from its (uncompressed) tar stream, for images built elsewhere."""
    b = _Builder()
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        for ti in tf:
            name = "/" + ti.name.lstrip("./").rstrip("/")
            base = os.path.basename(name)
            parent = os.path.dirname(name)
            if base == OPAQUE_WHITEOUT:
                b.idx.opaque.append(parent)
            elif base.startswith(WHITEOUT_PREFIX):
                b.idx.whiteouts.append(os.path.join(parent, base[len(WHITEOUT_PREFIX):]))
            elif ti.isreg():
                head = None
                if 0 < ti.size <= _SCAN_LIMIT:
                    f = tf.extractfile(ti)
                    head = f.read() if f else None
                b.file(name, ti.size, head)
    return b.done()


class Waste(msgspec.Struct, frozen=True, kw_only=True):
    layer: int  # the layer that deletes or overwrites
    shipped_in: int  # the earlier layer that still carries the bytes
    path: str
    size: int
    how: str  # deleted | overwritten


def analyse(indexes: list[LayerIndex]) -> list[Waste]:
    """Bytes of earlier layers that later layers hide, per file (in layer order)."""
    visible: dict[str, tuple[int, int]] = {}  # path -> (layer, size)
    out: list[Waste] = []

    def hide(prefix: str, layer: int, how: str, exact: bool) -> None:
        pre = prefix.rstrip("/") + "/"
        for path in [p for p in visible if (exact and p == prefix) or p.startswith(pre)]:
            src, size = visible.pop(path)
            out.append(Waste(layer=layer, shipped_in=src, path=path, size=size, how=how))

    for i, idx in enumerate(indexes):
        for d in idx.opaque:
            hide(d, i, "deleted", exact=False)
        for w in idx.whiteouts:
            hide(w, i, "deleted", exact=True)
        for path, size in idx.files.items():
            if path in visible:
                src, old = visible[path]
                out.append(Waste(layer=i, shipped_in=src, path=path, size=old, how="overwritten"))
            visible[path] = (i, size)
    return out
