"""Secrets for RUN steps: files on a private tmpfs, bind-mounted read-only, never in a layer.

The tmpfs lives outside the rootfs and the overlay upper, so nothing a step
does can copy a secret into a layer by accident except the step's own command.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Iterator

from shared.errors import InvalidArgument
from shared.runtime.spec import BindMount
from services.builder.frontend.instructions import SecretMount

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_MNT_DETACH = 2


def _mount_tmpfs(target: Path) -> None:
    rc = _libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", 0, b"mode=0700,size=16m")
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


@contextlib.contextmanager
def secret_mounts(wanted: tuple[SecretMount, ...], values: dict[str, bytes], scratch: Path,
                  where: str) -> Iterator[tuple[BindMount, ...]]:
    """Bind mounts for the secrets a step asks for; a missing optional one is skipped."""
    present = [m for m in wanted if m.id in values]
    for m in wanted:
        if m.id not in values and m.required:
            raise InvalidArgument(f"{where}: secret {m.id} is required but was not provided (--secret id={m.id},src=...)")
    if not present:
        yield ()
        return
    d = scratch / "secrets"
    d.mkdir(mode=0o700)
    _mount_tmpfs(d)
    try:
        binds = []
        for i, m in enumerate(present):
            p = d / f"s{i}"
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, values[m.id])
                os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, m.mode)
            finally:
                os.close(fd)
            binds.append(BindMount(str(p), m.target, readonly=True))
        yield tuple(binds)
    finally:
        _libc.umount2(os.fsencode(d), _MNT_DETACH)
        os.rmdir(d)
