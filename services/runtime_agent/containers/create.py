"""What a RunRequest becomes: the container's record (id, name, config) and its runtime spec.

Everything here is checked before anything exists on the host: a refused run leaves nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import msgspec

from services.runtime_agent.containers import etcfiles, runflags
from services.runtime_agent.containers.config import parse_restart, process_of
from services.runtime_agent.containers.store import check_name
from services.runtime_agent.images import ImageStore
from services.runtime_agent.network import parse_publish_all
from services.runtime_agent.network.usernet import run_endpoints
from shared.errors import InvalidArgument
from shared.messages.agent import Container, ContainerConfig, ImageRecord, Limits, RunRequest, Volume
from shared.runtime import BindMount, ContainerSpec
from shared.runtime.jsonlog import rfc3339nano


def new_container(req: RunRequest, image: ImageRecord, volumes: list[Volume], *, agent_id: str,
                  images: ImageStore, user_networks, log_path: Callable[[str], Path],
                  cgroup_parent: str) -> Container:
    """The record of a container `req` asks for (not yet stored)."""
    if req.rm and req.restart not in ("", "no"):
        raise InvalidArgument("conflicting options: --restart and --rm")
    cfg = images.config(image.digest)
    proc = process_of(cfg.config, req)
    cid = secrets.token_hex(32)
    name = check_name(req.name) if req.name else f"{_ADJ[int(cid[:4], 16) % len(_ADJ)]}_{cid[:8]}"
    parse_publish_all(req.publish)  # refuse a bad spec before anything exists
    if req.publish and req.network in ("none", "host"):  # networks: a user network publishes too
        raise InvalidArgument(f"ports cannot be published with network {req.network}")
    endpoints = run_endpoints(user_networks, req.network, req.network_aliases, req.ip)  # networks
    config = ContainerConfig(
        image=req.image, image_digest=image.digest, args=proc.args, entrypoint=proc.entrypoint, cmd=proc.cmd,
        env=proc.env, working_dir=proc.cwd, user=proc.user,
        hostname=etcfiles.check_hostname(req.hostname) if req.hostname else cid[:12],  # docker's default
        volumes=volumes, network=req.network, publish=list(req.publish),
        restart=parse_restart(req.restart), auto_remove=req.rm,
        limits=Limits(memory=req.memory, memory_swap=req.memory_swap, cpu_shares=req.cpu_shares),
        labels=dict(req.labels), flags=runflags.resolve(req.flags, cfg.config), stdio=req.stdio,
        endpoints=endpoints)
    if req.flags.publish_all and req.network not in ("none", "host"):
        config = msgspec.structs.replace(config, publish=config.publish + runflags.exposed_publish(cfg.config))
    c = Container(id=cid, name=name, host=agent_id, created=rfc3339nano(), config=config,
                  log_path=str(log_path(cid)))
    runtime_spec(c, cgroup_parent, rootfs_path="/", uid=0, gid=0, groups=(), netns="host")  # limits checked now
    return c


def runtime_spec(c: Container, cgroup_parent: str, *, rootfs_path: str, uid: int, gid: int,
                 groups: tuple[int, ...], netns: str, etc: tuple[BindMount, ...] = ()) -> ContainerSpec:
    """What the OCI runtime is given to start container `c`."""
    lim = c.config.limits
    return ContainerSpec(
        args=tuple(c.config.args), rootfs=rootfs_path, cgroups_path=f"{cgroup_parent}/{c.id}",
        env=tuple(c.config.env), cwd=c.config.working_dir, uid=uid, gid=gid, additional_gids=groups,
        hostname=c.config.hostname,
        # The /etc files first: a user's volume over one of them wins, as with docker.
        mounts=etc + tuple(BindMount(v.source, v.destination, v.readonly) for v in c.config.volumes),
        network=netns, memory_bytes=lim.memory, memory_swap_bytes=lim.memory_swap,
        cpu_shares=lim.cpu_shares, readonly_rootfs=c.config.flags.read_only,
        flags=runflags.spec_flags(c.config.flags), terminal=c.config.stdio.tty)


_ADJ = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "nifty", "quirky", "sharp", "tender",
        "vivid", "wise", "zen", "bold", "crisp")
