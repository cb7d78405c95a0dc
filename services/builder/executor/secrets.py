"""Secrets for RUN steps: files on a private tmpfs, bind-mounted read-only, or env; never in a layer.

The tmpfs lives outside the rootfs and the overlay upper, so nothing a step
does can copy a secret into a layer by accident except the step's own command.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from shared.errors import InvalidArgument
from shared.runtime.spec import BindMount
from services.builder.executor.mounts import tmpfs
from services.builder.frontend.instructions import SecretMount


@contextlib.contextmanager
def secret_mounts(wanted: tuple[SecretMount, ...], values: dict[str, bytes], scratch: Path,
                  where: str) -> Iterator[tuple[tuple[BindMount, ...], tuple[str, ...]]]:
    """Bind mounts and `NAME=value` env entries for the secrets a step asks for.

    A missing optional secret is skipped; one that is missing and required fails.
    """
    present = [m for m in wanted if m.id in values]
    for m in wanted:
        if m.id not in values and m.required:
            raise InvalidArgument(f"{where}: secret {m.id} is required but was not provided (--secret id={m.id},src=...)")
    env = []
    for m in present:
        if m.env:
            try:
                env.append(f"{m.env}={values[m.id].decode()}")
            except UnicodeDecodeError:
                raise InvalidArgument(f"{where}: secret {m.id} is not text: it cannot be env {m.env}") from None
    files = [m for m in present if m.target]
    if not files:
        yield (), tuple(env)
        return
    with tmpfs(scratch / "secrets", "mode=0700,size=16m") as d:
        binds = []
        for i, m in enumerate(files):
            p = d / f"s{i}"
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, values[m.id])
                os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, m.mode)
            finally:
                os.close(fd)
            binds.append(BindMount(str(p), m.target, readonly=True))
        yield tuple(binds), tuple(env)
