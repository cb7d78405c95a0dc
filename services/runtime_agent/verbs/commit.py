"""`commit`: a container's writable layer as a new image over its image's, pushed to the stack
registry (like `import`, through the registry API with the agent's own token).

The container is frozen while its upper is written (docker's --pause default), so the
layer is one moment's state. Its base layers are mounted from the repository the image
came from: the registry has them, no byte of theirs travels. `--change` applies the
Dockerfile instructions docker's commit accepts to the new config.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import tempfile

from services.runtime_agent.verbs import cgroupctl
from shared.errors import InvalidArgument, NotFound
from shared.layers.diff import write_layer
from shared.messages.agent import Container
from shared.messages.verbs import CommitReply, CommitRequest
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from shared.oci.reference import Reference
from shared.runtime.jsonlog import rfc3339nano

CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "WORKDIR", "STOPSIGNAL", "VOLUME")


def apply_changes(config: dict, changes: list[str]) -> dict:
    """docker commit --change: each a Dockerfile instruction that only touches the config."""
    cfg = dict(config)
    for line in changes:
        word, _, rest = line.strip().partition(" ")
        op, rest = word.upper(), rest.strip()
        if op not in CHANGE_INSTRUCTIONS:
            raise InvalidArgument(f"--change {line!r}: {op or 'nothing'} is not one of {', '.join(CHANGE_INSTRUCTIONS)}")
        if op in ("CMD", "ENTRYPOINT"):
            cfg["Cmd" if op == "CMD" else "Entrypoint"] = _command(rest)
        elif op in ("ENV", "LABEL"):
            pairs = _pairs(rest, op)
            if op == "ENV":
                env = [e for e in cfg.get("Env") or [] if e.partition("=")[0] not in pairs]
                cfg["Env"] = env + [f"{k}={v}" for k, v in pairs.items()]
            else:
                cfg["Labels"] = {**(cfg.get("Labels") or {}), **pairs}
        elif op == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts") or {})
            for p in rest.split():
                num, _, proto = p.partition("/")
                if not num.isdigit():
                    raise InvalidArgument(f"--change {line!r}: invalid port {p!r}")
                ports[f"{num}/{proto or 'tcp'}"] = {}
            cfg["ExposedPorts"] = ports
        elif op == "VOLUME":
            vols = _command(rest) if rest.startswith("[") else rest.split()
            cfg["Volumes"] = {**(cfg.get("Volumes") or {}), **{v: {} for v in vols}}
        else:
            cfg[{"USER": "User", "WORKDIR": "WorkingDir", "STOPSIGNAL": "StopSignal"}[op]] = rest
    return cfg


def _command(text: str) -> list[str]:
    if text.startswith("["):
        try:
            v = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"invalid JSON form {text!r}: {e}") from e
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InvalidArgument(f"invalid JSON form {text!r}: a list of strings")
        return v
    return ["/bin/sh", "-c", text]


def _pairs(text: str, op: str) -> dict[str, str]:
    words = shlex.split(text)
    if len(words) == 2 and "=" not in words[0]:
        return {words[0]: words[1]}  # ENV KEY VALUE, the old form
    out = {}
    for w in words:
        k, eq, v = w.partition("=")
        if not eq or not k:
            raise InvalidArgument(f"--change {op} {text!r}: KEY=VALUE expected")
        out[k] = v
    return out


async def commit(cs, puller, c: Container, req: CommitRequest) -> CommitReply:
    image = cs.images.get(c.config.image_digest)
    target = _target(req.reference, puller)
    try:
        upper = cs.snapshots.active(c.id).upper
    except NotFound:
        raise NotFound(f"container {c.id[:12]} has no filesystem yet (never started)") from None
    base_cfg = json.loads(cs.images.config_bytes(image.digest))
    source = puller.name(image.references[0]) if image.references else None
    if source is None or not source.in_stack:
        raise InvalidArgument("commit needs a container whose image came from the stack registry")
    client = puller._client(source)
    base = json.loads((await client.get_manifest(source.ref.path, image.digest)).body)

    fd, tmp = tempfile.mkstemp(prefix="commit-", dir=puller.tmp_dir)
    os.close(fd)
    frozen = req.pause and c.state.status == "running" and not c.state.paused
    try:
        if frozen:
            await asyncio.to_thread(cgroupctl.freeze, cs.cgroup_parent, c.id)
        try:
            def layer():
                with open(tmp, "wb") as out:
                    return write_layer(upper, out, compression="gzip")
            res = await asyncio.to_thread(layer)
        finally:
            if frozen:
                await asyncio.to_thread(cgroupctl.thaw, cs.cgroup_parent, c.id)
        now = rfc3339nano()
        cfg = dict(base_cfg)
        cfg["config"] = apply_changes(cfg.get("config") or {}, req.changes)
        cfg["created"] = now
        if req.author:
            cfg["author"] = req.author
        cfg["rootfs"] = {"type": "layers", "diff_ids": list(cfg.get("rootfs", {}).get("diff_ids", []))
                         + [str(res.diff_id)]}
        entry = {"created": now, "created_by": "dockyard commit " + c.id[:12]}
        if req.message:
            entry["comment"] = req.message
        if req.author:
            entry["author"] = req.author
        cfg["history"] = list(cfg.get("history") or []) + [entry]
        config_bytes = json.dumps(cfg, separators=(",", ":")).encode()
        layers = [{"mediaType": lyr["mediaType"], "digest": lyr["digest"], "size": lyr["size"]}
                  for lyr in base.get("layers", [])]
        layers.append({"mediaType": str(res.media_type), "digest": str(res.digest), "size": res.size})
        manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                    "config": {"mediaType": mt.OCI_CONFIG, "digest": str(Digest.from_bytes(config_bytes)),
                               "size": len(config_bytes)},
                    "layers": layers}
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
        push = puller._client(target)
        repo = target.ref.path

        async def base_layer(lyr: dict) -> None:
            async def refuse():
                raise NotFound(f"layer {lyr['digest']} could not be mounted from {source.ref.path}")
                yield b""  # pragma: no cover - an async generator that never yields
            await push.push_blob(repo, Digest(lyr["digest"]), lyr["size"], refuse, mount_from=source.ref.path)

        await asyncio.gather(*(base_layer(lyr) for lyr in layers[:-1]),
                             push.push_blob(repo, res.digest, res.size, tmp),
                             push.push_blob(repo, Digest.from_bytes(config_bytes), len(config_bytes), config_bytes,
                                            check_exists=False))
        tag = target.ref.tag or target.ref.reference
        digest = await push.put_manifest(repo, tag, manifest_bytes, mt.OCI_MANIFEST)
    finally:
        os.unlink(tmp)
    cs.event("commit", c, **({"comment": req.message} if req.message else {}))
    return CommitReply(digest=str(digest), reference=target.key, config_digest=str(Digest.from_bytes(config_bytes)))


def _target(reference: str, puller):
    if not reference:
        raise InvalidArgument("commit needs a repository[:tag] to push to")
    try:
        Reference.parse(reference)
    except InvalidArgument as e:
        raise InvalidArgument(f"invalid reference {reference!r}: {e.message}") from e
    n = puller.name(reference)
    if not n.in_stack:
        raise InvalidArgument(f"commit pushes to the stack registry only, not {n.registry}")
    if n.ref.digest:
        raise InvalidArgument("commit takes a tag, not a digest")
    return n
