"""`dockyard build` against a real stack: layers, whiteouts, cache, secrets, warnings, skopeo."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest

from examples.busybox import busybox_rootfs, tar_dir
from tests.e2e.conftest import skopeo

pytestmark = [pytest.mark.e2e, pytest.mark.root]

SECRET = "s3cr3t-value-never-in-a-layer"

DOCKERFILE = """\
ARG BASE=busybox:latest
FROM $BASE AS deps
ARG GREETING=hello
RUN echo "$GREETING from deps" > /greeting.txt  # @NONCE@
FROM busybox:latest AS unused
RUN exit 1
FROM $BASE
ARG GREETING
ENV APP=/app
WORKDIR $APP
COPY --from=deps /greeting.txt ./
COPY big.bin small.txt ./
COPY id_rsa /root/.ssh/id_rsa
RUN --mount=type=secret,id=tok cat /run/secrets/tok | wc -c > tok-len && rm big.bin
EXPOSE 8080
ENTRYPOINT ["/bin/sh"]
"""


@pytest.fixture(scope="module")
def base(stack, tmp_path_factory):
    d = tmp_path_factory.mktemp("bb")
    (d / "bb.tar").write_bytes(tar_dir(busybox_rootfs(d / "root")))
    stack.cli("import", str(d / "bb.tar"), "busybox:latest")
    return "busybox:latest"


def make_context(tmp: Path, dockerfile: str, files: dict[str, str] | None = None, name: str = "ctx") -> Path:
    """A context dir `tmp/name` with this Dockerfile and these files (parents made)."""
    ctx = tmp / name
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    for rel, text in (files or {}).items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(text)
    return ctx


def build_json(stack, ctx: Path, *args: str) -> dict:
    """`dockyard build --json ARGS CTX`: the reply."""
    return json.loads(stack.cli("build", "--json", *args, str(ctx), timeout=300).stdout)


def _context(tmp: Path) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir()
    # a step of its own for each test (the shell ignores the comment): another test's build in
    # the same stack, in any order, leaves no cache that this one would hit
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("@NONCE@", uuid.uuid4().hex))
    (ctx / "big.bin").write_bytes(b"\0" * (2 << 20))
    (ctx / "small.txt").write_text("v1\n")
    (ctx / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    (ctx / "ignored").mkdir()
    (ctx / "ignored" / "junk").write_text("x")
    (ctx / ".dockerignore").write_text("ignored\n")
    (ctx / "tok").write_text(SECRET)
    return ctx


def _build(stack, ctx: Path, *extra: str):
    p = stack.cli("build", "--json", "-t", "dybd-app:1", "--secret", f"id=tok,src={ctx / 'tok'}",
                  "--build-arg", "GREETING=hi", *extra, str(ctx))
    return json.loads(p.stdout)


def _layers(stack, tmp: Path, name: str) -> tuple[dict, list[dict[str, bytes | str]]]:
    out = tmp / "oci"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", stack.admin_creds,
           f"docker://{stack.registry_addr}/library/{name}", f"oci:{out}:x")
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((out / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())
    layers = []
    for d in manifest["layers"]:
        data = gzip.decompress((out / "blobs/sha256" / d["digest"][7:]).read_bytes())
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            layers.append({m.name: (tf.extractfile(m).read() if m.isfile() else "") for m in tf.getmembers()})
    return config, layers


def test_build_end_to_end(stack, base, tmp_path):
    ctx = _context(tmp_path)
    first = _build(stack, ctx)
    ran = [s["instruction"] for s in first["steps"] if not s["cached"]]
    assert any("RUN" in s and "greeting" in s for s in ran)
    assert not any("exit 1" in s for s in ran)  # the unused stage is not built

    kinds = {w["kind"] for w in first["warnings"]}
    assert "secret" in kinds and "wasted-bytes" in kinds
    assert any(w["path"] == "/app/big.bin" and w["size"] == 2 << 20 for w in first["warnings"])
    assert any(w["path"] == "/root/.ssh/id_rsa" for w in first["warnings"])

    config, layers = _layers(stack, tmp_path, "dybd-app:1")
    cfg = config["config"]
    assert cfg["Entrypoint"] == ["/bin/sh"] and cfg["WorkingDir"] == "/app"
    assert "8080/tcp" in cfg["ExposedPorts"] and "APP=/app" in cfg["Env"]
    merged: dict[str, object] = {}
    for layer in layers:
        for name, data in layer.items():
            base_name = name.rsplit("/", 1)[-1]
            if base_name.startswith(".wh."):
                merged.pop(name.rsplit("/", 1)[0] + "/" + base_name[4:], None)
            else:
                merged[name] = data
    assert merged["app/greeting.txt"] == b"hi from deps\n"
    assert merged["app/tok-len"].strip() == str(len(SECRET)).encode()
    assert "app/big.bin" not in merged  # deleted by the RUN ...
    assert any("app/.wh.big.bin" in layer for layer in layers)  # ... through a whiteout
    assert not any(n.startswith("ignored") for layer in layers for n in layer)
    assert not any(n.startswith("run/secrets") for layer in layers for n in layer)
    blob_text = json.dumps(config) + "".join(str(v) for layer in layers for v in layer.values())
    assert SECRET not in blob_text

    # Rebuild: every step from the cache.
    again = _build(stack, ctx)
    assert all(s["cached"] for s in again["steps"])
    # One context file changes: only the steps from its COPY on run again.
    (ctx / "small.txt").write_text("v2\n")
    third = _build(stack, ctx)
    fresh = [s["instruction"] for s in third["steps"] if not s["cached"]]
    assert fresh and fresh[0].startswith("COPY big.bin small.txt")
    assert any(s["cached"] and "greeting" in s["instruction"] for s in third["steps"])


async def test_second_builder_hits_the_cache(stack, base, tmp_path):
    """A builder with an empty disk gets every step from records another builder wrote."""
    from shared import bus
    from shared.buildcontext import context_excludes, pack_context
    from shared.messages.builder import BuildRequest, SecretRef
    from shared.registry.auth import bus_token_provider
    from services.builder.executor.cache import BuildCache
    from services.builder.executor.images import Registries
    from services.builder.executor.store import LocalStore
    from services.builder.handlers import Builder

    ctx = _context(tmp_path)
    _build(stack, ctx)  # through the stack's builder
    with open(tmp_path / "ctx.tar", "wb") as f:
        digest, _ = pack_context(str(ctx), f, context_excludes((ctx / ".dockerignore").read_text()), external={})
    nc = await bus.connect(stack.nats_url)
    regs = Registries(stack.registry_url, bus_token_provider(bus.BusClient(nc), "builder"))
    try:
        async def quiet(inbox, p):
            pass

        other = Builder(LocalStore(tmp_path / "other-builder"), await BuildCache.open(nc), regs, quiet)
        reply = await other.build(BuildRequest(context=digest, dockerfile=(ctx / "Dockerfile").read_text(),
                                               tags=["dybd-app:2"],
                                               build_args={"GREETING": "hi"},
                                               secrets=[SecretRef(id="tok", data=SECRET.encode())]))
        other.close()
    finally:
        await regs.close()
        await nc.drain()
    assert reply.steps and all(s.cached for s in reply.steps), [(s.instruction, s.cached) for s in reply.steps]
    assert not list((tmp_path / "other-builder" / "snapshots").iterdir())  # no layer was even unpacked
    assert any(w.kind == "wasted-bytes" for w in reply.warnings)  # the scan came with the records


def test_bad_dockerfile_names_line(stack, base, tmp_path):
    ctx = tmp_path / "bad"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN true\nFROBNICATE x\n")
    p = stack.cli("build", "-t", "dybd-bad:1", str(ctx), check=False)
    assert p.returncode != 0 and "Dockerfile:3: FROBNICATE: unknown instruction" in p.stderr


async def test_rebuild_uploads_a_context_the_registry_lost(stack, base, tmp_path):
    """An unchanged context is not re-sent, unless the registry no longer has it (GC, a cold cache)."""
    import hashlib
    import time

    import aiohttp

    from shared import bus, subjects
    from shared.messages.builder import (CONTEXT_REPOSITORY, ContextMissingReply,
                                         ContextMissingRequest)
    from shared.registry.auth import bus_token_provider
    from shared.registry.client import RegistryClient

    ctx = _context(tmp_path)
    made = time.time()
    first = _build(stack, ctx)
    time.sleep(max(0.0, made + 2.2 - time.time()))  # past the racy window: the CLI remembers the context
    assert all(s["cached"] for s in _build(stack, ctx)["steps"])
    name = hashlib.sha256(str(ctx).encode()).hexdigest()[:32]
    xdg = stack.env.get("XDG_CACHE_HOME")
    base_dir = Path(xdg) / "dockyard" if xdg else stack.data_dir / "cli-cache"
    remembered = json.loads((base_dir / "context-digests" / f"{name}.json").read_text())
    blobs = [remembered["context"]["digest"], *remembered["context"]["external"]]
    assert len(blobs) == 2  # the tar and big.bin
    nc = await bus.connect(stack.nats_url)
    try:
        b = bus.BusClient(nc)

        async def missing() -> list[str]:
            r = await b.request(subjects.BUILD_CONTEXT_MISSING, ContextMissingRequest(digests=blobs), ContextMissingReply, timeout=30)
            return [str(d) for d in r.missing]

        assert await missing() == []
        async with aiohttp.ClientSession() as session:
            rc = RegistryClient(session, stack.registry_url, token_provider=bus_token_provider(b, "test"))
            for d in blobs:
                resp = await rc._send("DELETE", f"/v2/{CONTEXT_REPOSITORY}/blobs/{d}",
                                      [f"repository:{CONTEXT_REPOSITORY}:delete"], ok=(202,), what="unlink")
                resp.release()
        assert await missing() == blobs
        again = _build(stack, ctx)  # the CLI must notice and send both again
        assert await missing() == []
    finally:
        await nc.drain()
    assert [s["layer"] for s in again["steps"]] == [s["layer"] for s in first["steps"]]


def test_onbuild_triggers_run_in_the_child(stack, base, tmp_path):
    """A base's `ONBUILD COPY` runs in the child's context; the child does not inherit the trigger."""
    base_ctx = tmp_path / "onbase"
    base_ctx.mkdir()
    (base_ctx / "Dockerfile").write_text("FROM busybox:latest\nONBUILD COPY hello.txt /hello.txt\n")
    stack.cli("build", "-t", "dybd-onbase:1", str(base_ctx))
    child_ctx = tmp_path / "onchild"
    child_ctx.mkdir()
    (child_ctx / "Dockerfile").write_text("FROM dybd-onbase:1\nRUN cat /hello.txt > /seen.txt\n")
    (child_ctx / "hello.txt").write_text("hello from the child context\n")
    out = json.loads(stack.cli("build", "--json", "-t", "dybd-onchild:1", str(child_ctx)).stdout)
    assert [s["instruction"].split(" #")[0] for s in out["steps"]][:1] == ["COPY hello.txt /hello.txt"]

    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    base_config, _ = _layers(stack, tmp_path / "b", "dybd-onbase:1")
    assert base_config["config"]["OnBuild"] == ["COPY hello.txt /hello.txt"]
    config, layers = _layers(stack, tmp_path / "c", "dybd-onchild:1")
    assert "OnBuild" not in config["config"]
    assert layers[-2]["hello.txt"] == b"hello from the child context\n"
    assert layers[-1]["seen.txt"] == b"hello from the child context\n"  # the trigger ran before RUN
