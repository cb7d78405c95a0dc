"""RUN: a container over the stage's rootfs; its overlay upper dir is the step's change."""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path
from typing import Awaitable, Callable

from shared.errors import InvalidArgument
from shared.runtime import ContainerSpec, Runtime
from shared.runtime.spec import KNOWN_CAPABILITIES, BindMount, build_config
from services.builder.executor import rootfs, users
from services.builder.executor.secrets import secret_mounts
from services.builder.frontend.steps import RunStep

OutputFn = Callable[[str, bytes], "Awaitable[None] | None"]


def _mountpoints(spec: ContainerSpec) -> list[str]:
    """Every path the runtime may create in the rootfs to mount on, parents included."""
    paths: set[str] = set()
    for m in build_config(spec)["mounts"]:
        p = m["destination"]
        while p not in ("/", ""):
            paths.add(p)
            p = posixpath.dirname(p)
    return sorted(paths)


async def run_step(runtime: Runtime, lowers: list[Path], step: RunStep, scratch: Path, *,
                   secrets: dict[str, bytes], network: str, on_output: OutputFn | None = None,
                   binds: tuple[BindMount, ...] = (), insecure: bool = False) -> Path:
    """Run `step` in a container with `binds` (its other mounts); the upper dir holding what it changed."""
    where = step.src.where("RUN")
    cid = "dybd-" + uuid.uuid4().hex[:16]
    bundle = scratch / "bundle"
    bundle.mkdir()
    with rootfs.writable(lowers, scratch) as (merged, upper):
        uid, gid, extra = users.resolve(merged, step.user, f"{where}: ") if step.user else (0, 0, ())
        with secret_mounts(step.secrets, secrets, scratch, where) as (secret_binds, secret_env):
            spec = ContainerSpec(
                args=step.argv, rootfs=str(merged), cgroups_path=f"/{cid}", env=step.env + secret_env,
                cwd=step.workdir or "/", uid=uid, gid=gid, additional_gids=extra,
                hostname="buildkitsandbox", mounts=binds + secret_binds,
                network="host" if network == "host" else "none",
                extra_capabilities=tuple(sorted(KNOWN_CAPABILITIES)) if insecure else ())
            created = [p for p in _mountpoints(spec) if not os.path.lexists(merged / p.lstrip("/"))]
            code = await runtime.run_to_completion(cid, bundle, spec, on_output=on_output)
        if code != 0:
            raise InvalidArgument(
                f"{where}: process {list(step.argv)!r} did not complete successfully: exit code: {code}",
                detail_code="BUILD_STEP_FAILED")
    rootfs.remove_mount_stubs(upper, created)
    return upper
