"""The registry under load (issue 16), short forms of bench/registry_load.py.

- `test_short_load`: concurrent clients push (shared layers, monolithic, chunked and
  streamed uploads, mounts), pull, list tags and HEAD manifests for 10 s against a real
  `dockyard up` (auth on, tokens as skopeo gets them) with the garbage collector on a
  2-second schedule: no errors, and every pushed image pulls back with verified digests.
- `test_overload_*`: a stack whose listeners admit only a few requests at once, driven
  by far more clients: some answers are 429 with Retry-After, no other 5xx than 503, no
  timeouts; clients that respect Retry-After all complete, and once the load goes every
  request succeeds at once.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from bench.loadgen import LoadConfig, run_load, verify_all
from bench.loadgen.client import RegistryClient
from bench.loadgen.stats import Stats
from tests.e2e.conftest import skopeo, start_stack, stop_stack
from tests.support.images import oci_layout, skopeo_env

pytestmark = pytest.mark.e2e

SERVICES = ["layer-store", "registry-gateway", "garbage-collector"]


def _creds(stack) -> tuple[str, str]:
    return ("admin", stack.admin_password)


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("load"), only=SERVICES)
    yield s
    assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def tight_stack(tmp_path_factory):
    """Each listener admits 4 requests at once; others wait 0.2 s, then get 429."""
    s = start_stack(tmp_path_factory.mktemp("tight"), only=["layer-store", "registry-gateway"],
                    extra_env={"DOCKYARD_MAX_INFLIGHT": "4", "DOCKYARD_ADMISSION_WAIT": "0.2",
                               "DOCKYARD_RETRY_AFTER": "1"})
    yield s
    assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def refusing_stack(tmp_path_factory):
    """Each listener admits 4 requests at once; others get 429 at once (a fast route served
    from KV would never make a 0.2 s wait run out, and the burst would prove nothing)."""
    s = start_stack(tmp_path_factory.mktemp("refusing"), only=["layer-store", "registry-gateway"],
                    extra_env={"DOCKYARD_MAX_INFLIGHT": "4", "DOCKYARD_ADMISSION_WAIT": "0",
                               "DOCKYARD_RETRY_AFTER": "1"})
    yield s
    assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


def test_short_load(load_stack):
    load_stack.cli("gc", "schedule", "registry", "*/2 * * * * *")
    load_stack.cli("gc", "schedule", "uploads", "*/2 * * * * *")
    try:
        cfg = LoadConfig(base_url=load_stack.registry_url, creds=_creds(load_stack), clients=8, duration=10,
                         max_layer_mb=8, prefix="short")
        result = asyncio.run(run_load(cfg))
        print(result.stats.report("dockyard"))
        assert result.stats.errors == [], result.stats.report("dockyard")
        ops = result.stats.summary()["ops"]
        assert {"push", "pull", "tags", "head"} <= set(ops), ops
        assert result.images
        assert asyncio.run(verify_all(cfg, result.images)) == []
        status = load_stack.cli("gc", "status").stdout
        assert "registry" in status and "ok" in status, status  # the collector did run meanwhile
    finally:
        load_stack.cli("gc", "schedule", "registry", "")
        load_stack.cli("gc", "schedule", "uploads", "")


async def _burst(base: str, creds: tuple[str, str], path: str, scope: str, n: int) -> Counter:
    """`n` requests at once, each with a valid token, none retried: the statuses they got."""
    stats = Stats()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        rc = RegistryClient(http, base, creds, stats)
        await rc.request("GET", path, scope=scope)  # a token, while nothing else runs
        token = rc._tokens[scope]

        async def one() -> tuple[int, str | None]:
            async with http.get(base + path, headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                return r.status, r.headers.get("Retry-After")
        got = await asyncio.gather(*(one() for _ in range(n)))
    return Counter(got)


def test_overload_answers_429_with_retry_after_and_recovers(refusing_stack):
    cfg = LoadConfig(base_url=refusing_stack.registry_url, creds=_creds(refusing_stack), clients=2, duration=1,
                     min_layer_mb=0.1, max_layer_mb=1, prefix="tight")
    seeded = asyncio.run(run_load(cfg))
    assert seeded.stats.errors == [] and seeded.images
    image = seeded.images[0]
    base = refusing_stack.registry_url
    blob = image.blobs[-1][0]
    for path in (f"/v2/{image.repo}/manifests/{image.tag}", f"/v2/{image.repo}/tags/list",
                 f"/v2/{image.repo}/blobs/{blob}"):
        got = asyncio.run(_burst(base, _creds(refusing_stack), path, f"repository:{image.repo}:pull", 300))
        statuses = Counter()
        for (status, _), count in got.items():
            statuses[status] += count
        assert statuses[429] > 0, (path, got)
        assert set(statuses) <= {200, 429, 503}, (path, got)
        assert all(ra is not None and int(ra) >= 1 for (s, ra), _ in got.items() if s in (429, 503)), got
        # the load gone: all of them succeed, and at once
        after = asyncio.run(_burst(base, _creds(refusing_stack), path, f"repository:{image.repo}:pull", 4))
        assert after == Counter({(200, None): 4}), (path, after)
    assert asyncio.run(verify_all(cfg, seeded.images)) == []


def test_overload_clients_that_respect_retry_after_complete(tight_stack):
    cfg = LoadConfig(base_url=tight_stack.registry_url, creds=_creds(tight_stack), clients=120, duration=6,
                     min_layer_mb=0.1, max_layer_mb=1, shared_layers=3, prefix="flood")
    result = asyncio.run(run_load(cfg))
    s = result.stats
    assert s.errors == [], s.report("flood")
    assert s.throttled > 0 and s.retry_after_missing == 0, s.report("flood")
    assert set(s.statuses) <= {200, 201, 202, 204, 307, 401, 404, 429, 503}, s.statuses
    assert asyncio.run(verify_all(cfg, result.images)) == []


def test_overload_skopeo_push_completes(tight_stack, tmp_path):
    """skopeo retries a refused request (one without a body) a few times, as long as
    Retry-After says: during a flood of 60 clients it still completes its push."""
    cfg = LoadConfig(base_url=tight_stack.registry_url, creds=_creds(tight_stack), clients=60, duration=8,
                     min_layer_mb=0.1, max_layer_mb=1, shared_layers=3, prefix="skflood")
    layout = tmp_path / "layout"
    oci_layout(layout, [os.urandom(300_000), os.urandom(200_000)])
    ref = f"docker://{tight_stack.registry_addr}/skflood/skopeo:latest"
    creds = ":".join(_creds(tight_stack))

    async def flood_and_skopeo() -> tuple:
        load = asyncio.ensure_future(run_load(cfg))
        await asyncio.sleep(1)  # the flood is on
        p = await asyncio.create_subprocess_exec(
            "skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout}:latest", ref,
            env=skopeo_env(tmp_path / "home"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(p.communicate(), 240)
        return await load, p.returncode, err.decode()

    result, code, err = asyncio.run(flood_and_skopeo())
    assert code == 0, err
    assert result.stats.errors == [], result.stats.report("flood")
    assert result.stats.throttled > 0, result.stats.report("flood")
    got = skopeo("inspect", "--tls-verify=false", "--creds", creds, ref)
    assert '"Digest"' in got.stdout
