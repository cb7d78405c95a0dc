"""Every service's /metrics, scraped around a push, a pull, a build, a container and a GC run:
the counters move by exactly what was done, and the exposition parses as Prometheus's.

A stack of its own (no other test's work lands between two scrapes); services found as a
user finds them, in `dockyard status`."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path
from collections.abc import Iterable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import skopeo, start_stack, stop_stack
from tests.support.images import busybox_layout, skopeo_env

pytestmark = pytest.mark.e2e

SERVICES = ("layer-store", "registry-gateway", "builder", "runtime-agent", "garbage-collector")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("dymt-stack"))
    yield s
    ids = s.cli("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
    if ids:
        s.cli("rm", "-f", *ids, check=False)
    assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def endpoints(stack) -> dict[str, str]:
    """service -> its metrics URL, from `dockyard status`."""
    found = json.loads(stack.cli("status", "--json").stdout)["services"]
    urls = {}
    for svc in found:
        for kv in svc["detail"].split():
            if kv.startswith("metrics="):
                urls[svc["name"]] = kv.split("=", 1)[1]
    assert sorted(urls) == sorted(SERVICES), found
    return urls


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape_all(endpoints: dict[str, str]) -> dict[str, Samples]:
    return {name: scrape(url) for name, url in endpoints.items()}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def moved(before: Samples, after: Samples, names: Iterable[str] = ()) -> dict:
    keys = {k for k in {*before, *after} if not names or k[0] in names}
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys) if after.get(k, 0) != before.get(k, 0)}


def layout_sizes(layout: Path, digest: str) -> dict[str, int]:
    """The sizes of an OCI layout's image: manifest, config, layers (what a registry stores)."""
    blob = lambda d: (layout / "blobs" / "sha256" / d.split(":")[1]).read_bytes()  # noqa: E731
    manifest = json.loads(blob(digest))
    return {"manifest": len(blob(digest)), "config": manifest["config"]["size"],
            "layers": sum(layer["size"] for layer in manifest["layers"])}


@pytest.fixture(scope="module")
def pushed(stack, endpoints, tmp_path_factory):
    """A busybox image pushed with skopeo, and the scrapes around the push."""
    tmp = tmp_path_factory.mktemp("dymt-img")
    layout = tmp / "layout"
    digest = busybox_layout(layout, tmp)
    before = scrape_all(endpoints)
    skopeo("copy", "--dest-tls-verify=false", f"--dest-creds={stack.admin_creds}", f"oci:{layout}:latest",
           f"docker://{stack.registry_addr}/dymt/app:1", env=skopeo_env(tmp / "home"))
    return {"ref": f"{stack.registry_addr}/dymt/app:1", "digest": digest, "sizes": layout_sizes(layout, digest),
            "before": before, "after": scrape_all(endpoints), "home": tmp / "home"}


MANIFEST_ROUTE = "/v2/{name}/manifests/{reference}"


def test_push_counts_one_manifest_and_stores_its_blobs(pushed):
    b, a = pushed["before"], pushed["after"]
    gw_b, gw_a = b["registry-gateway"], a["registry-gateway"]
    assert delta(gw_b, gw_a, "dockyard_http_requests_total", route=MANIFEST_ROUTE, method="PUT", code="201") == 1
    assert delta(gw_b, gw_a, "dockyard_http_request_bytes_total", route=MANIFEST_ROUTE,
                 method="PUT") == pushed["sizes"]["manifest"]
    ls_b, ls_a = b["layer-store"], a["layer-store"]
    stored = sum(pushed["sizes"].values())  # the manifest is a blob of the layer-store too
    assert delta(ls_b, ls_a, "dockyard_blobs_committed_total") == 3, moved(ls_b, ls_a)
    assert delta(ls_b, ls_a, "dockyard_blob_committed_bytes_total") == stored
    assert delta(ls_b, ls_a, "dockyard_blob_store_blobs") == 3
    assert delta(ls_b, ls_a, "dockyard_blob_store_bytes") == stored
    assert value(ls_a, "dockyard_blob_uploads_in_flight") == 0
    # the layer's bytes went straight to the layer-store (a direct upload on loopback)
    assert delta(ls_b, ls_a, "dockyard_http_request_bytes_total",
                 route="/v2/{name}/blobs/uploads/{id}") == pushed["sizes"]["layers"] + pushed["sizes"]["config"]
    # the gateway linked both into the repository when the layer-store asked it to
    assert delta(gw_b, gw_a, "dockyard_bus_requests_total", subject="dockyard.registry.upload.committed",
                 code="ok") == 2
    assert delta(gw_b, gw_a, "dockyard_http_request_duration_seconds_count", route=MANIFEST_ROUTE,
                 method="PUT") == 1


def test_pull_reads_each_blob_once(stack, endpoints, pushed, tmp_path):
    before = scrape_all(endpoints)
    skopeo("copy", "--src-tls-verify=false", f"--src-creds={stack.admin_creds}", f"docker://{pushed['ref']}",
           f"oci:{tmp_path / 'out'}:latest", env=skopeo_env(pushed["home"]))
    after = scrape_all(endpoints)
    gw_b, gw_a = before["registry-gateway"], after["registry-gateway"]
    ls_b, ls_a = before["layer-store"], after["layer-store"]
    assert delta(gw_b, gw_a, "dockyard_http_requests_total", route=MANIFEST_ROUTE, method="GET", code="200") == 1, \
        moved(gw_b, gw_a, ["dockyard_http_requests_total"])
    sizes = pushed["sizes"]
    # the manifest from the gateway, the blobs from the layer-store it redirects to
    assert delta(gw_b, gw_a, "dockyard_http_response_bytes_total", method="GET", route=MANIFEST_ROUTE) == sizes["manifest"]
    assert delta(gw_b, gw_a, "dockyard_http_requests_total", route="/v2/{name}/blobs/{digest}", code="307") == 2
    served = delta(ls_b, ls_a, "dockyard_http_response_bytes_total", method="GET", route="/v2/{name}/blobs/{digest}")
    assert served == sizes["config"] + sizes["layers"], (
        moved(ls_b, ls_a, ["dockyard_http_response_bytes_total"]), moved(gw_b, gw_a, ["dockyard_http_response_bytes_total"]))
    assert delta(ls_b, ls_a, "dockyard_blobs_committed_total") == 0


def test_build_counts_steps_by_cache_state(stack, endpoints, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text(uuid.uuid4().hex)  # a context no other build had
    (ctx / "b.txt").write_text(uuid.uuid4().hex)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\nENV X=1\n")
    before = scrape_all(endpoints)
    first = json.loads(stack.cli("build", "--json", "-t", "dymt/built:1", str(ctx), timeout=300).stdout)
    mid = scrape_all(endpoints)
    second = json.loads(stack.cli("build", "--json", "-t", "dymt/built:2", str(ctx), timeout=300).stdout)
    after = scrape_all(endpoints)
    steps = len(first["steps"])
    assert steps >= 2 and not any(s["cached"] for s in first["steps"]) and all(s["cached"] for s in second["steps"])
    bd = before["builder"], mid["builder"], after["builder"]
    assert delta(bd[0], bd[1], "dockyard_builds_total", outcome="ok") == 1
    assert delta(bd[0], bd[1], "dockyard_build_steps_total", cache="miss") == steps
    assert delta(bd[0], bd[1], "dockyard_build_steps_total", cache="hit") == 0
    assert delta(bd[1], bd[2], "dockyard_builds_total", outcome="ok") == 1
    assert delta(bd[1], bd[2], "dockyard_build_steps_total", cache="hit") == steps
    assert delta(bd[1], bd[2], "dockyard_build_steps_total", cache="miss") == 0
    assert value(bd[2], "dockyard_build_last_cache_hit_ratio") == 1.0
    assert delta(bd[0], bd[2], "dockyard_build_duration_seconds_count") == 2
    assert delta(bd[0], bd[2], "dockyard_bus_requests_total", subject="dockyard.builder.build", code="ok") == 2
    gw = before["registry-gateway"], after["registry-gateway"]
    assert delta(*gw, "dockyard_http_requests_total", route=MANIFEST_ROUTE, method="PUT", code="201") == 2

    bad = ctx / "bad"
    bad.mkdir()
    (bad / "Dockerfile").write_text("FROM scratch\nCOPY missing.txt /m\n")
    assert stack.cli("build", "-t", "dymt/bad:1", str(bad), check=False).returncode != 0
    failed = scrape_all(endpoints)["builder"]
    assert delta(bd[2], failed, "dockyard_builds_total", outcome="ok") == 0
    assert delta(bd[2], failed, "dockyard_builds_total") == 1


def test_agent_counts_containers_by_state(stack, endpoints, pushed):
    agent = json.loads(stack.cli("agents", "--json").stdout)[0]["agent_id"]
    before = scrape_all(endpoints)["runtime-agent"]
    cid = stack.cli("create", "--name", "dymt-c1", pushed["ref"], "true", timeout=180).stdout.strip()
    mid = scrape_all(endpoints)["runtime-agent"]
    stack.cli("rm", cid)
    after = scrape_all(endpoints)["runtime-agent"]
    assert delta(before, mid, "dockyard_agent_containers", agent=agent, state="created") == 1
    assert delta(before, mid, "dockyard_agent_containers", agent=agent) == 1
    assert delta(mid, after, "dockyard_agent_containers", agent=agent, state="created") == -1
    assert delta(before, mid, "dockyard_bus_requests_total", subject=f"dockyard.agent.{agent}.run", code="ok") == 1
    assert value(mid, "dockyard_agent_images", agent=agent) >= 1


def test_gc_counts_runs_and_freed_bytes(stack, endpoints):
    before = scrape_all(endpoints)["garbage-collector"]
    dry = json.loads(stack.cli("--json", "gc", "run", "--dry-run", "--job", "uploads").stdout)
    real = json.loads(stack.cli("--json", "gc", "run", "--job", "uploads").stdout)
    after = scrape_all(endpoints)["garbage-collector"]
    freed = sum(r["freed"] for r in real["reports"])
    assert delta(before, after, "dockyard_gc_runs_total", job="uploads", trigger="manual", dry_run="true",
                 outcome="ok") == 1, (dry, moved(before, after))
    assert delta(before, after, "dockyard_gc_runs_total", job="uploads", trigger="manual", dry_run="false",
                 outcome="ok") == 1
    assert delta(before, after, "dockyard_gc_freed_bytes_total", job="uploads") == freed
    assert delta(before, after, "dockyard_bus_requests_total", subject="dockyard.gc.run", code="ok") == 2


def test_labels_stay_bounded(endpoints, pushed):
    """No digest, repository or container name in any label, after all the work above."""
    for name, samples in scrape_all(endpoints).items():
        for metric, labels in samples:
            for k, v in labels:
                assert "sha256" not in v and "dymt" not in v, (name, metric, k, v)
        assert value(samples, "dockyard_nats_reconnects_total") == 0  # before the test that kills NATS


def test_the_grafana_dashboard_asks_for_metrics_the_services_expose(endpoints, pushed):
    """Every series deploy/'s dashboard queries is one some service has (after the work above)."""
    import re
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy/prometheus/grafana-dashboard.json")
                           .read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    wanted = {m for e in exprs for m in re.findall(r"\bdockyard_[a-z_]+", e)}
    assert len(wanted) >= 15, exprs
    have = {name for samples in scrape_all(endpoints).values() for name, _ in samples}
    assert sorted(wanted - have) == []


def test_nats_reconnects_are_counted(stack, endpoints):
    """The stack's nats-server killed: `up` starts it again on its port, and every service's
    one connection comes back, counted once. Last in the module: the stack saw a NATS death."""
    import signal
    import time
    before = scrape_all(endpoints)
    nats_pid = json.loads((stack.data_dir / "stack.json").read_text())["nats_pid"]
    os.kill(nats_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        after = scrape_all(endpoints)
        back = [n for n in SERVICES if delta(before[n], after[n], "dockyard_nats_reconnects_total") >= 1]
        if len(back) == len(SERVICES) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(back) == sorted(SERVICES), {n: delta(before[n], after[n], "dockyard_nats_reconnects_total")
                                              for n in SERVICES}
    for n in SERVICES:
        lost = delta(before[n], after[n], "dockyard_nats_disconnects_total")
        assert delta(before[n], after[n], "dockyard_nats_reconnects_total") == lost == 1, n  # one connection each
    assert stack.cli("status").returncode == 0
