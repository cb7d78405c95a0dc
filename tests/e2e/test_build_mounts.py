"""RUN --mount (cache, bind, tmpfs, secret env, ssh) and --security against a real builder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_build import _layers, base, build_json, make_context  # noqa: F401 (base: a fixture)
from tests.e2e.test_build_prune import _prune

pytestmark = [pytest.mark.e2e, pytest.mark.root]







def _image(stack, tmp: Path, tag: str) -> tuple[dict, dict[str, bytes | str], list[dict]]:
    """(config, the merged top-level view of the files, the layers)."""
    out = tmp / tag.replace(":", "-")
    out.mkdir()
    config, layers = _layers(stack, out, tag)
    merged: dict[str, bytes | str] = {}
    for layer in layers:
        merged.update(layer)
    return config, merged, layers




async def test_cache_mount_persists_is_shared_and_never_in_a_layer(stack, base, tmp_path):
    first = make_context(tmp_path, name="c1", dockerfile="FROM busybox:latest\n"
                 "RUN --mount=type=cache,id=dybm-log,target=/var/cache/x "
                 "echo run1 >> /var/cache/x/log && cat /var/cache/x/log > /seen1\n"
                 "RUN --mount=type=cache,id=dybm-own,target=/own,uid=1234,gid=99,mode=0710 "
                 "stat -c '%u %g %a' /own > /own-stat\n")
    build_json(stack, first, "-t", "dybm-cache:1")
    # Another Dockerfile, another build: the same cache (by id) under another target.
    second = make_context(tmp_path, name="c2", dockerfile="FROM busybox:latest\n"
                  "RUN --mount=type=cache,id=dybm-log,target=/elsewhere "
                  "echo run2 >> /elsewhere/log && cat /elsewhere/log > /seen2\n")
    build_json(stack, second, "-t", "dybm-cache:2")
    _, one, layers1 = _image(stack, tmp_path, "dybm-cache:1")
    _, two, layers2 = _image(stack, tmp_path, "dybm-cache:2")
    assert one["seen1"] == b"run1\n" and one["own-stat"] == b"1234 99 710\n"
    assert two["seen2"] == b"run1\nrun2\n"
    for layer in layers1[-2:] + layers2[-1:]:
        assert not any(n in ("own", "elsewhere") or n.startswith(("var/cache", "own/", "elsewhere/"))
                       for n in layer), sorted(layer)

    # A prune clears them: the next run starts from an empty cache.
    reply = await _prune(stack, max_bytes=0)
    assert any(i.startswith("cache-mount ") for i in reply.items)
    build_json(stack, second, "-t", "dybm-cache:3", "--no-cache")
    _, three, _ = _image(stack, tmp_path, "dybm-cache:3")
    assert three["seen2"] == b"run2\n"


def test_bind_mounts_read_only_by_default_rw_discarded_and_keyed_by_content(stack, base, tmp_path):
    ctx = make_context(tmp_path, name="b", dockerfile="FROM busybox:latest AS tools\n"
               "RUN mkdir /kit && echo tool > /kit/t\nFROM busybox:latest\n"
               "RUN --mount=type=bind,source=data,target=/mnt "
               "cat /mnt/file > /bound && (touch /mnt/x 2>/dev/null && echo rw || echo ro) > /mode\n"
               "RUN --mount=type=bind,from=tools,source=/kit,target=/k,rw "
               "echo scribble > /k/t && cat /k/t > /wrote\n"
               "RUN --mount=type=bind,from=tools,source=/kit,target=/k cat /k/t > /after\n",
               files={"data/file": "v1\n"})
    build_json(stack, ctx, "-t", "dybm-bind:1")
    _, img, layers = _image(stack, tmp_path, "dybm-bind:1")
    assert img["bound"] == b"v1\n" and img["mode"] == b"ro\n"
    assert img["wrote"] == b"scribble\n" and img["after"] == b"tool\n"  # the rw write was thrown away
    assert not any(n.startswith(("mnt/", "k/")) for layer in layers for n in layer)
    assert not (Path(ctx) / "data" / "x").exists()

    (ctx / "data" / "file").write_text("v2\n")  # what a bind mount reads is part of the step's key
    again = build_json(stack, ctx, "-t", "dybm-bind:2")
    assert not next(s for s in again["steps"] if "/bound" in s["instruction"])["cached"]
    assert next(s for s in again["steps"] if "mkdir /kit" in s["instruction"])["cached"]


def test_tmpfs_and_secret_env(stack, base, tmp_path):
    secret = "env-secret-never-in-a-layer"
    (tmp_path / "tok").write_text(secret)
    ctx = make_context(tmp_path, name="t", dockerfile="FROM busybox:latest\n"
               "RUN --mount=type=tmpfs,target=/scratch,size=2m "
               "echo x > /scratch/f && df -k /scratch | tail -1 | awk '{print $2}' > /tmpfs-kb\n"
               "RUN --mount=type=secret,id=tok,env=TOK echo ${#TOK} > /toklen && test ! -e /run/secrets/tok\n")
    build_json(stack, ctx, "-t", "dybm-tmpfs:1", "--secret", f"id=tok,src={tmp_path / 'tok'}")
    config, img, layers = _image(stack, tmp_path, "dybm-tmpfs:1")
    assert img["tmpfs-kb"] == b"2048\n"
    assert img["toklen"] == f"{len(secret)}\n".encode()
    assert not any(n.startswith("scratch/") for layer in layers for n in layer)
    assert secret not in json.dumps(config) + "".join(str(v) for v in img.values())


def test_ssh_and_insecure_are_refused_clearly(stack, base, tmp_path):
    ctx = make_context(tmp_path, name="s", dockerfile="FROM busybox:latest\nRUN --mount=type=ssh,required true\n")
    p = stack.cli("build", "-t", "dybm-ssh:1", str(ctx), check=False)
    assert p.returncode != 0 and "type=ssh" in p.stderr and "SSH agent" in p.stderr
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN --mount=type=ssh test ! -e /run/buildkit/ssh_agent.0\n")
    build_json(stack, ctx, "-t", "dybm-ssh:2")  # an optional ssh mount without an agent is left out, as BuildKit does
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN --security=insecure true\n")
    p = stack.cli("build", "-t", "dybm-insecure:1", str(ctx), check=False)
    assert p.returncode != 0 and "DOCKYARD_BUILDER_ALLOW_INSECURE" in p.stderr
