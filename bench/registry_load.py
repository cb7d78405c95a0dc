"""Registry load test: 50 concurrent clients for 60 s against dockyard and CNCF distribution.

    .venv/bin/python bench/registry_load.py [--clients 50] [--duration 60] [--overload 500]

Starts `dockyard up` (layer-store, registry-gateway, garbage-collector, each its own
process) in its default configuration: auth on, the clients get tokens through the Docker
token flow as skopeo does; direct uploads and blob redirects "auto". The garbage collector
runs its `registry` and `uploads` jobs on a 5-second schedule throughout (`--gc-cron`).
Then `docker-registry serve` (distribution 2.8.2, no auth) on loopback.

The same load (bench/loadgen: pushes of 1-20 MB layers, some shared between images and
mounted, monolithic, chunked and streamed uploads; pulls verifying every digest; tag lists;
manifest HEADs; the same seed for both) runs against each in turn. Printed per registry:
requests/s, p50/p99 per operation, errors (must be 0), bytes/s, and for dockyard the RSS
of the gateway and the layer-store at the end (and their peak); then every pushed image is
pulled back and verified, and the ratios dockyard/distribution.

`--overload N` (default 500; 0 skips) then runs N clients for `--overload-duration`
seconds against dockyard: the answers beyond the listeners' limit are 429 with
Retry-After (counted), no request times out, the RSS stays bounded (sampled), and a short
run after it (10 clients) sees no refusal: the registry recovered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench.loadgen import LoadConfig, run_load, verify_all  # noqa: E402
from registry import free_port, load_average, start_distribution, stop, teardown, wait_http  # noqa: E402

DOCKYARD = str(Path(sys.executable).parent / "dockyard")
SERVICES = ("layer-store", "registry-gateway", "garbage-collector")


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            fields[k] = int(v.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def start_dockyard(root: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen, str, tuple[str, str], dict]:
    port = free_port()
    data = root / "dockyard"
    args = [DOCKYARD, "--data-dir", str(data), "up", "--registry-addr", f"127.0.0.1:{port}", "--nats-port", "0"]
    for s in SERVICES:
        args += ["--only", s]
    proc = subprocess.Popen(args, env={**os.environ, **env_extra}, stdout=subprocess.DEVNULL,
                            stderr=open(root / "dockyard.log", "wb"), start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/v2/")
    stack_file = data / "stack.json"
    for _ in range(200):
        if stack_file.exists() and (data / "admin-password").exists():
            break
        time.sleep(0.1)
    pids = json.loads(stack_file.read_text())["pids"]
    return proc, f"http://127.0.0.1:{port}", ("admin", (data / "admin-password").read_text().strip()), pids


def dockyard_cli(root: Path, *args: str) -> str:
    p = subprocess.run([DOCKYARD, "--data-dir", str(root / "dockyard"), *args], capture_output=True, text=True,
                       timeout=60)
    if p.returncode:
        raise SystemExit(f"dockyard {' '.join(args)}: {p.stderr}")
    return p.stdout


async def sample_rss(pids: dict[str, int], peak: dict[str, int], stop_event: asyncio.Event) -> None:
    while not stop_event.is_set():
        for name in ("registry-gateway", "layer-store"):
            peak[name] = max(peak.get(name, 0), rss_kb(pids[name])[0])
        try:
            await asyncio.wait_for(stop_event.wait(), 0.5)
        except TimeoutError:
            pass


async def measured(cfg: LoadConfig, pids: dict[str, int] | None, images=()):
    peak: dict[str, int] = {}
    done = asyncio.Event()
    sampler = asyncio.ensure_future(sample_rss(pids, peak, done)) if pids else None
    try:
        result = await run_load(cfg, images)
    finally:
        done.set()
        if sampler:
            await sampler
    return result, peak


def print_rss(pids: dict[str, int], peak: dict[str, int]) -> None:
    for name in ("registry-gateway", "layer-store"):
        now, hwm = rss_kb(pids[name])
        print(f"  RSS {name}: {now / 1024:.0f} MiB at the end, {peak.get(name, 0) / 1024:.0f} MiB sampled peak "
              f"(VmHWM {hwm / 1024:.0f} MiB)")


def ratios(dy: dict, dist: dict) -> None:
    print("\ndockyard / distribution (same load, same run)")
    print(f"  requests/s {dy['requests_per_s']:.0f} / {dist['requests_per_s']:.0f} = "
          f"{dy['requests_per_s'] / max(dist['requests_per_s'], 1e-9):.2f}")
    print(f"  bytes/s    {dy['bytes_per_s'] / 1e6:.1f} / {dist['bytes_per_s'] / 1e6:.1f} MB/s = "
          f"{dy['bytes_per_s'] / max(dist['bytes_per_s'], 1e-9):.2f}")
    for op in ("push", "pull", "tags", "head"):
        a, b = dy["ops"].get(op), dist["ops"].get(op)
        if a and b:
            print(f"  {op:<5} p50 {a['p50_ms']:.0f} / {b['p50_ms']:.0f} ms = {a['p50_ms'] / max(b['p50_ms'], 1e-9):.2f}"
                  f"   p99 {a['p99_ms']:.0f} / {b['p99_ms']:.0f} ms = {a['p99_ms'] / max(b['p99_ms'], 1e-9):.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load per registry")
    ap.add_argument("--overload", type=int, default=500, help="clients of the overload phase (0: skip)")
    ap.add_argument("--overload-duration", type=float, default=20.0)
    ap.add_argument("--gc-cron", default="*/5 * * * * *", help="schedule of the GC jobs during the load")
    ap.add_argument("--max-layer-mb", type=float, default=20.0)
    ap.add_argument("--distribution", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for dockyard's environment")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dyload-bench-"))
    procs: list[subprocess.Popen] = []
    failed = False
    seed = int.from_bytes(os.urandom(3), "big") + 1
    try:
        dy_proc, dy_url, creds, pids = start_dockyard(root, dict(e.split("=", 1) for e in args.env))
        procs.append(dy_proc)
        for job in ("registry", "uploads"):
            dockyard_cli(root, "gc", "schedule", job, args.gc_cron)
        print(f"{args.clients} clients, {args.duration:.0f} s per registry, GC every {args.gc_cron!r}; "
              f"load average at start {load_average()}", flush=True)
        shape = dict(clients=args.clients, duration=args.duration, max_layer_mb=args.max_layer_mb, seed=seed)
        dy_cfg = LoadConfig(base_url=dy_url, creds=creds, **shape)
        dy, peak = asyncio.run(measured(dy_cfg, pids))
        print(dy.stats.report("\ndockyard"))
        print_rss(pids, peak)
        failures = asyncio.run(verify_all(dy_cfg, dy.images))
        print(f"  pulled back {len(dy.images)} images, every blob's digest verified: {len(failures)} failures")
        failed |= bool(dy.stats.errors or failures)
        print("  GC during the run:\n    " + dockyard_cli(root, "gc", "status").replace("\n", "\n    ").rstrip())
        if args.distribution:
            dist_proc, dist_target = start_distribution(root)
            procs.append(dist_proc)
            dist_cfg = LoadConfig(base_url=f"http://{dist_target.addr}", creds=None, **shape)
            dist, _ = asyncio.run(measured(dist_cfg, None))
            print(dist.stats.report("\ndistribution"))
            failures = asyncio.run(verify_all(dist_cfg, dist.images))
            print(f"  pulled back {len(dist.images)} images: {len(failures)} failures")
            ratios(dy.stats.summary(), dist.stats.summary())
            stop(dist_proc)
        if args.overload:
            over_cfg = LoadConfig(base_url=dy_url, creds=creds, clients=args.overload,
                                  duration=args.overload_duration, max_layer_mb=args.max_layer_mb,
                                  prefix="overload")
            over, peak = asyncio.run(measured(over_cfg, pids, dy.images))
            s = over.stats
            print(s.report(f"\noverload, {args.overload} clients"))
            print(f"  answers: {dict(sorted(s.statuses.items()))}; refused and retried after Retry-After: "
                  f"{s.throttled} (without Retry-After: {s.retry_after_missing})")
            print_rss(pids, peak)
            after_cfg = LoadConfig(base_url=dy_url, creds=creds, clients=10, duration=5,
                                   max_layer_mb=args.max_layer_mb, prefix="after")
            after = asyncio.run(run_load(after_cfg))
            print(f"  after the overload, 10 clients for 5 s: {after.stats.requests} requests, "
                  f"{after.stats.throttled} refused, {len(after.stats.errors)} errors")
            failures = asyncio.run(verify_all(over_cfg, over.images))
            print(f"  pulled back {len(over.images)} images of the overload: {len(failures)} failures")
            failed |= bool(s.errors or failures or after.stats.errors or after.stats.throttled)
        print(f"\nload average at end {load_average()}")
    finally:
        teardown(procs, root, args.keep)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
