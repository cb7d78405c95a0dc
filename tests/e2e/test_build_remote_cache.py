"""--cache-to / --cache-from: a builder whose cache is gone rebuilds from a registry artifact, running nothing."""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_build import base, build_json  # noqa: F401 (base: a fixture)
from tests.e2e.test_build_prune import _prune

pytestmark = [pytest.mark.e2e, pytest.mark.root]

TEN_STEPS = "FROM busybox:latest AS tool\nRUN echo tool > /tool\nFROM busybox:latest\n" + "".join(
    f"RUN echo step{i} > /s{i}\n" for i in range(8)) + "COPY --from=tool /tool /tool\nCOPY f.txt /f.txt\n"





@pytest.mark.parametrize("mode", ["max", "inline"])
async def test_cold_builder_rebuilds_from_the_remote_cache(stack, base, tmp_path, mode):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(TEN_STEPS + f"RUN echo {mode} > /mode\n")
    (ctx / "f.txt").write_text("f\n")
    to = "type=inline" if mode == "inline" else "type=registry,ref=dybr-cache:buildcache,mode=max"
    first = build_json(stack, ctx, "-t", f"dybr-app:{mode}", "--cache-to", to)
    assert not all(s["cached"] for s in first["steps"])
    await _prune(stack, max_bytes=0)  # the KV records and every local layer are gone
    cold = build_json(stack, ctx, "-t", f"dybr-app:{mode}-2")
    assert not any(s["cached"] for s in cold["steps"] if s["instruction"].startswith("RUN"))  # truly cold
    await _prune(stack, max_bytes=0)
    src = f"dybr-app:{mode}" if mode == "inline" else "dybr-cache:buildcache"
    again = build_json(stack, ctx, "-t", f"dybr-app:{mode}-3", "--cache-from", f"type=registry,ref={src}")
    # inline holds the target's own chain (BuildKit's inline cache is mode=min); max every stage.
    exported = [i for i, s in enumerate(first["steps"]) if mode == "max" or s["stage"] == 1]
    assert all(again["steps"][i]["cached"] for i in exported), [(s["instruction"], s["cached"]) for s in again["steps"]]
    assert [again["steps"][i]["layer"] for i in exported] == [first["steps"][i]["layer"] for i in exported]
    assert mode == "inline" or len(exported) == len(first["steps"])


def test_a_missing_cache_is_a_miss_and_bad_specs_are_refused(stack, base, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN echo x > /x\n")
    build_json(stack, ctx, "--cache-from", "type=registry,ref=dybr-none:nothing")
    p = stack.cli("build", "--cache-to", "type=registry", str(ctx), check=False)
    assert p.returncode != 0 and "needs ref=" in p.stderr
    p = stack.cli("build", "--cache-to", "type=registry,ref=example.com/x:c", str(ctx), check=False)
    assert p.returncode != 0 and "stack registry" in p.stderr
