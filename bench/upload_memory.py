"""Memory per upload in flight: N clients pushing big layers at once, the layer-store's RSS
against CNCF distribution's in the same run.

    .venv/bin/python bench/upload_memory.py [--clients 64] [--duration 20] [--layer-mb 16]

Starts `dockyard up` (layer-store, registry-gateway, garbage-collector; default
configuration: auth on, direct uploads) and `docker-registry serve`, and runs against each
the load of bench/loadgen with pushes only (monolithic, chunked and streamed uploads of
`--layer-mb` layers), every client pushing all the time. The RSS of the layer-store (and of
the gateway) is sampled every 0.2 s with the layer-store's own count of upload requests in
flight (its /metrics, answered on loopback). Printed: idle and peak RSS, the most uploads
in flight, the growth per client ((peak - idle) / clients), distribution's the same way,
and the ratio; then the same clients pull those images (every digest verified), measured
the same way. Every pushed image is pulled back and verified.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench.loadgen import LoadConfig, run_load, verify_all  # noqa: E402
from bench.loadgen.workload import PULL, PUSH  # noqa: E402
from registry import load_average, start_distribution, stop  # noqa: E402
from registry_load import rss_kb, start_dockyard  # noqa: E402

MiB = 1 << 20
IN_FLIGHT = "dockyard_blob_uploads_in_flight"


def listening_url(pid: int) -> str:
    """http://ADDR:PORT the process `pid` listens on (the layer-store has one listener)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
        if f"pid={pid}," in line:
            return "http://" + line.split()[3]
    return ""


def in_flight(metrics_url: str) -> int:
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(IN_FLIGHT + " ") or line.startswith(IN_FLIGHT + "{"):
                    return int(float(line.rsplit(" ", 1)[1]))
    except OSError:
        pass
    return -1


async def sampled(cfg: LoadConfig, pids: dict[str, int], metrics_url: str, images=()):
    """The load's result and {name: peak RSS kB}, {"in_flight": most seen}."""
    peak: dict[str, int] = {}
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            for name, pid in pids.items():
                peak[name] = max(peak.get(name, 0), rss_kb(pid)[0])
            if metrics_url:
                n = await asyncio.to_thread(in_flight, metrics_url)
                peak["in_flight"] = max(peak.get("in_flight", 0), n)
            try:
                await asyncio.wait_for(done.wait(), 0.2)
            except TimeoutError:
                pass

    sampler = asyncio.ensure_future(sample())
    try:
        result = await run_load(cfg, images)
    finally:
        done.set()
        await sampler
    return result, peak


def report(name: str, idle: int, peak: int, clients: int, extra: str = "") -> float:
    per = (peak - idle) / clients / 1024
    print(f"  {name}: idle {idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, "
          f"{per:.2f} MiB per client{extra}")
    return per


def pulls(cfg: LoadConfig, pids: dict[str, int], images, idle: int, name: str):
    """The pull phase: every client pulling (and verifying) the images pushed before."""
    result, peak = asyncio.run(sampled(cfg, pids, "", images))
    print(f"  pulls: {result.stats.requests} requests, {result.stats.bytes_down / MiB:.0f} MiB down, "
          f"{len(result.stats.errors)} errors")
    return result, report(f"{name} pulling", idle, peak[name], cfg.clients)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--layer-mb", type=float, default=16.0)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for dockyard's environment")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dyupmem-bench-"))
    procs = []
    failed = False
    shape = dict(clients=args.clients, duration=args.duration, min_layer_mb=args.layer_mb,
                 max_layer_mb=args.layer_mb, mix={PUSH: 1.0})
    try:
        print(f"{args.clients} clients pushing {args.layer_mb:.0f} MB layers for {args.duration:.0f} s; "
              f"load average at start {load_average()}", flush=True)
        dy_proc, dy_url, creds, pids = start_dockyard(root, dict(e.split("=", 1) for e in args.env))
        procs.append(dy_proc)
        mine = {n: pids[n] for n in ("layer-store", "registry-gateway")}
        idle = {n: rss_kb(p)[0] for n, p in mine.items()}
        ls = listening_url(pids["layer-store"])
        cfg = LoadConfig(base_url=dy_url, creds=creds, **shape)
        dy, peak = asyncio.run(sampled(cfg, mine, f"{ls}/metrics" if ls else ""))
        failures = asyncio.run(verify_all(cfg, dy.images))
        print(f"dockyard: {dy.stats.requests} requests, {dy.stats.bytes_up / MiB:.0f} MiB up, "
              f"{len(dy.stats.errors)} errors, {len(dy.images)} images pulled back: {len(failures)} failures")
        flight = peak.get("in_flight", -1)
        dy_per = report("layer-store", idle["layer-store"], peak["layer-store"], args.clients,
                        f" (most upload requests in flight: {flight})" if flight >= 0 else "")
        report("registry-gateway", idle["registry-gateway"], peak["registry-gateway"], args.clients)
        failed |= bool(dy.stats.errors or failures)
        dy_pull, dy_pull_per = pulls(LoadConfig(base_url=dy_url, creds=creds, **{**shape, "mix": {PULL: 1.0}}), mine,
                        dy.images, idle["layer-store"], "layer-store")
        failed |= dy_pull.stats.errors != []
        stop(dy_proc)

        dist_proc, target = start_distribution(root)
        procs.append(dist_proc)
        d_idle = rss_kb(dist_proc.pid)[0]
        d_cfg = LoadConfig(base_url=f"http://{target.addr}", creds=None, **shape)
        dist, d_peak = asyncio.run(sampled(d_cfg, {"distribution": dist_proc.pid}, ""))
        failures = asyncio.run(verify_all(d_cfg, dist.images))
        print(f"distribution: {dist.stats.requests} requests, {dist.stats.bytes_up / MiB:.0f} MiB up, "
              f"{len(dist.stats.errors)} errors, {len(dist.images)} images pulled back: {len(failures)} failures")
        d_per = report("distribution", d_idle, d_peak["distribution"], args.clients)
        d_pull, d_pull_per = pulls(LoadConfig(base_url=f"http://{target.addr}", creds=None, **{**shape, "mix": {PULL: 1.0}}),
                       {"distribution": dist_proc.pid}, dist.images, d_idle, "distribution")
        print(f"\nlayer-store / distribution, memory per client pushing: {dy_per:.2f} / {d_per:.2f} MiB = "
              f"{dy_per / max(d_per, 1e-9):.2f}; push throughput "
              f"{dy.stats.bytes_up / max(dy.stats.elapsed, 1e-9) / 1e6:.0f} / "
              f"{dist.stats.bytes_up / max(dist.stats.elapsed, 1e-9) / 1e6:.0f} MB/s")
        print(f"layer-store / distribution, memory per client pulling: {dy_pull_per:.2f} / {d_pull_per:.2f} MiB = "
              f"{dy_pull_per / max(d_pull_per, 1e-9):.2f}; pull throughput "
              f"{dy_pull.stats.bytes_down / max(dy_pull.stats.elapsed, 1e-9) / 1e6:.0f} / "
              f"{d_pull.stats.bytes_down / max(d_pull.stats.elapsed, 1e-9) / 1e6:.0f} MB/s")
        print(f"load average at end {load_average()}")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
