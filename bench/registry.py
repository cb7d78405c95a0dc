"""Registry benchmark: skopeo push and pull of one 200 MB layer, dockyard against CNCF distribution.

    .venv/bin/python bench/registry.py [--rounds 5] [--mb 200]

Starts `dockyard up` (layer-store + registry-gateway as separate processes, auth on,
skopeo with the admin credentials) and `docker-registry serve` on loopback with
temporary data dirs. Each round makes a fresh OCI layout with a new random layer (a
real gzip stream), so neither registry ever already holds the blob, then runs both
registries in turn (the order alternating by round): a push into a fresh repository
(skopeo's blob-info cache deleted first, so nothing is skipped or mounted) and a pull
of it into a fresh OCI layout. The skopeo flags are the same for both, except for
credentials (distribution runs without auth). Prints per-round times, the machine's
load average, medians and the ratios: dockyard's push against the push to a registry that
discards what it reads (bench/discard_registry.py: the least any registry could make
skopeo take; target <= 1.05), and dockyard's pull against distribution's (target <= 0.9);
distribution's push against the floor too, for scale. `--no-floor` skips the discard
registry. Default configuration: direct uploads and blob redirects "auto" (signed URLs).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BLOB_INFO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")
DOCKYARD = str(Path(sys.executable).parent / "dockyard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_blob(layout: Path, data: bytes) -> dict:
    d = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / d).write_bytes(data)
    return {"digest": f"sha256:{d}", "size": len(data)}


def make_layout(layout: Path, mb: int) -> None:
    """An OCI image layout (tag `latest`) with one random layer of `mb` MiB."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    # Really gzip (stored blocks: random bytes do not compress), or skopeo would see an
    # uncompressed layer and gzip it on the fly, measuring its compressor instead of the registry.
    layer = write_blob(layout, gzip.compress(os.urandom(mb << 20), compresslevel=0, mtime=0))
    config = write_blob(layout, json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
    manifest = write_blob(layout, json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}]}).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (401 with auth on)
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout}s")


class Target:
    def __init__(self, name: str, addr: str, creds: str | None):
        self.name, self.addr, self.creds = name, addr, creds

    def _creds(self, flag: str) -> list[str]:
        return [flag, self.creds] if self.creds else []

    def push(self, layout: Path, repo: str) -> float:
        BLOB_INFO_CACHE.unlink(missing_ok=True)
        return run(["skopeo", "copy", "-q", "--dest-tls-verify=false", *self._creds("--dest-creds"),
                    f"oci:{layout}:latest", f"docker://{self.addr}/{repo}:latest"])

    def pull(self, repo: str, dest: Path) -> float:
        BLOB_INFO_CACHE.unlink(missing_ok=True)
        t = run(["skopeo", "copy", "-q", "--src-tls-verify=false", *self._creds("--src-creds"),
                 f"docker://{self.addr}/{repo}:latest", f"oci:{dest}:latest"])
        shutil.rmtree(dest)
        return t


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def start_dockyard(root: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen, Target]:
    port = free_port()
    data = root / "dockyard"
    env = {**os.environ, **env_extra}
    proc = subprocess.Popen([DOCKYARD, "--data-dir", str(data), "up", "--registry-addr", f"127.0.0.1:{port}",
                             "--nats-port", "0", "--only", "layer-store", "--only", "registry-gateway"],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(root / "dockyard.log", "wb"),
                            start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/v2/")
    pw_file = data / "admin-password"
    for _ in range(100):
        if pw_file.exists():
            break
        time.sleep(0.1)
    creds = f"admin:{pw_file.read_text().strip()}" if pw_file.exists() else None
    return proc, Target("dockyard", f"127.0.0.1:{port}", creds)


def start_distribution(root: Path) -> tuple[subprocess.Popen, Target]:
    port = free_port()
    cfg = root / "distribution.yml"
    cfg.write_text(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {root / 'dist'}}}, "
                   f"delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "distribution.log", "wb"), start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/v2/")
    return proc, Target("distribution", f"127.0.0.1:{port}", None)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def teardown(procs: list[subprocess.Popen], root: Path, keep: bool) -> None:
    """Stop what a bench started; remove its scratch dir unless asked to keep it."""
    for p in procs:
        stop(p)
    if keep:
        print(f"scratch kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mb", type=int, default=200, help="layer size in MiB")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for dockyard's environment")
    ap.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                    help="also push to a registry that discards the bytes (default on)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dyrg-bench-"))
    procs = []
    sink = None
    try:
        dy_proc, dy = start_dockyard(root, dict(e.split("=", 1) for e in args.env))
        procs.append(dy_proc)
        dist_proc, dist = start_distribution(root)
        procs.append(dist_proc)
        times: dict[str, dict[str, list[float]]] = {t.name: {"push": [], "pull": []} for t in (dy, dist)}
        floor: list[float] = []
        if args.floor:
            from discard_registry import start as start_sink
            sink, sink_addr = start_sink()
            floor_target = Target("discard", sink_addr, None)
        print(f"load average at start: {load_average()}", flush=True)
        for n in range(args.rounds):
            layout = root / f"layout-{n}"
            make_layout(layout, args.mb)  # a new layer: no registry has seen it
            os.sync()  # its writeback must not land inside a measured push
            order = (dy, dist) if n % 2 == 0 else (dist, dy)
            for target in order:
                repo = f"bench/r{n}"
                times[target.name]["push"].append(target.push(layout, repo))
                times[target.name]["pull"].append(target.pull(repo, root / f"pull-{target.name}-{n}"))
            if args.floor:
                floor.append(floor_target.push(layout, f"bench/r{n}"))
            shutil.rmtree(layout)
            print(f"round {n + 1}: " + "  ".join(
                f"{t}: push {v['push'][-1]:.2f}s pull {v['pull'][-1]:.2f}s" for t, v in times.items())
                + (f"  discard: push {floor[-1]:.2f}s" if floor else "")
                + f"  (load {load_average()})", flush=True)
        med = {t: {op: statistics.median(v) for op, v in ops.items()} for t, ops in times.items()}
        print(f"\n{args.mb} MiB layer, {args.rounds} rounds, median seconds (load at end {load_average()})")
        print(f"{'':14}{'dockyard':>10}{'distribution':>14}{'dy/dist':>9}"
              + (f"{'floor':>8}{'dy/floor':>10}" if floor else ""))
        best = statistics.median(floor) if floor else None
        for op in ("push", "pull"):
            dy_t, dist_t = med["dockyard"][op], med["distribution"][op]
            line = f"{op:14}{dy_t:>10.2f}{dist_t:>14.2f}{dy_t / dist_t:>9.2f}"
            if best is not None and op == "push":
                line += f"{best:>8.2f}{dy_t / best:>10.2f}"
            print(line)
        print("targets: pull dockyard/distribution <= 0.90"
              + (f"; push dockyard/floor <= 1.05 (distribution/floor: "
                 f"{med['distribution']['push'] / best:.2f})" if best is not None else ""))
    finally:
        if sink is not None:
            sink.close()
        teardown(procs, root, args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
