"""HTTPS benchmark: skopeo push and pull of one 200 MB layer over TLS, dockyard against CNCF
distribution serving TLS, in the same run.

    .venv/bin/python bench/https.py [--rounds 5] [--mb 200]

dockyard runs `up` with DOCKYARD_HTTP_TLS=on on loopback (the HTTPS a fleet serves off
loopback: the node certificate from the fleet CA, uploads and blob redirects to the
layer-store's own HTTPS port, auth on: skopeo logs in as admin). distribution
(`docker-registry`) gets a node certificate of the same kind (ECDSA P-256) from a CA of its
own, no auth. skopeo verifies both (`--dest-cert-dir`/`--src-cert-dir` with `ca.crt`, no
--tls-verify=false). Rounds as in bench/registry.py: a new random layer each, fresh
repositories, skopeo's blob-info cache deleted before each copy, the order alternating.
Prints per-round times, the load average, medians and dockyard/distribution ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry import BLOB_INFO_CACHE, DOCKYARD, free_port, load_average, make_layout, teardown  # noqa: E402

from shared import tls  # noqa: E402


class TlsTarget:
    """A registry skopeo reaches over HTTPS, trusting the CA in `certs` (ca.crt)."""

    def __init__(self, name: str, addr: str, certs: Path, creds: str | None):
        self.name, self.addr, self.certs, self.creds = name, addr, certs, creds

    def _creds(self, flag: str) -> list[str]:
        return [flag, self.creds] if self.creds else []

    def push(self, layout: Path, repo: str) -> float:
        BLOB_INFO_CACHE.unlink(missing_ok=True)
        return _timed(["skopeo", "copy", "-q", "--dest-cert-dir", str(self.certs), *self._creds("--dest-creds"),
                       f"oci:{layout}:latest", f"docker://{self.addr}/{repo}:latest"])

    def pull(self, repo: str, dest: Path) -> float:
        BLOB_INFO_CACHE.unlink(missing_ok=True)
        t = _timed(["skopeo", "copy", "-q", "--src-cert-dir", str(self.certs), *self._creds("--src-creds"),
                    f"docker://{self.addr}/{repo}:latest", f"oci:{dest}:latest"])
        shutil.rmtree(dest)
        return t


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _cert_dir(ca_pem: Path, dest: Path) -> Path:
    dest.mkdir()
    shutil.copy(ca_pem, dest / "ca.crt")
    return dest


def _wait_https(url: str, ca: Path, timeout: float = 30.0) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1, context=ctx).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (401 with auth on)
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def start_dockyard(root: Path) -> tuple[subprocess.Popen, TlsTarget]:
    port = free_port()
    data = root / "dockyard"
    env = {**os.environ, tls.HTTP_TLS_ENV: "on"}
    proc = subprocess.Popen([DOCKYARD, "--data-dir", str(data), "up", "--registry-addr", f"127.0.0.1:{port}",
                             "--nats-port", "0", "--only", "layer-store", "--only", "registry-gateway"],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(root / "dockyard.log", "wb"),
                            start_new_session=True)
    ca = data / "credentials" / tls.CA_FILE
    pw_file = data / "admin-password"
    for _ in range(300):
        if pw_file.exists() and ca.exists():
            break
        if proc.poll() is not None:
            raise SystemExit(f"dockyard up exited {proc.returncode}; see {root / 'dockyard.log'}")
        time.sleep(0.1)
    _wait_https(f"https://127.0.0.1:{port}/v2/", ca)
    return proc, TlsTarget("dockyard", f"127.0.0.1:{port}", _cert_dir(ca, root / "dy-certs"),
                           f"admin:{pw_file.read_text().strip()}")


def start_distribution(root: Path) -> tuple[subprocess.Popen, TlsTarget]:
    port = free_port()
    cdir = root / "dist-credentials"
    cdir.mkdir()
    tls.ensure_ca(cdir, name="distribution bench CA")
    tls.ensure_node_cert(cdir, "distribution", ["127.0.0.1"])
    cfg = root / "distribution.yml"
    cfg.write_text(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {root / 'dist'}}}, "
                   f"delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}, tls: {{certificate: "
                   f"{cdir / tls.NODE_CERT_FILE}, key: {cdir / tls.NODE_KEY_FILE}}}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "distribution.log", "wb"), start_new_session=True)
    _wait_https(f"https://127.0.0.1:{port}/v2/", cdir / tls.CA_FILE)
    return proc, TlsTarget("distribution", f"127.0.0.1:{port}", _cert_dir(cdir / tls.CA_FILE, root / "dist-certs"),
                           None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mb", type=int, default=200, help="layer size in MiB")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dyhttps-bench-"))
    procs = []
    try:
        dy_proc, dy = start_dockyard(root)
        procs.append(dy_proc)
        dist_proc, dist = start_distribution(root)
        procs.append(dist_proc)
        times: dict[str, dict[str, list[float]]] = {t.name: {"push": [], "pull": []} for t in (dy, dist)}
        print(f"load average at start: {load_average()}", flush=True)
        for n in range(args.rounds):
            layout = root / f"layout-{n}"
            make_layout(layout, args.mb)
            os.sync()
            for target in ((dy, dist) if n % 2 == 0 else (dist, dy)):
                repo = f"bench/r{n}"
                times[target.name]["push"].append(target.push(layout, repo))
                times[target.name]["pull"].append(target.pull(repo, root / f"pull-{target.name}-{n}"))
            shutil.rmtree(layout)
            print(f"round {n + 1}: " + "  ".join(
                f"{t}: push {v['push'][-1]:.2f}s pull {v['pull'][-1]:.2f}s" for t, v in times.items())
                + f"  (load {load_average()})", flush=True)
        med = {t: {op: statistics.median(v) for op, v in ops.items()} for t, ops in times.items()}
        print(f"\n{args.mb} MiB layer over HTTPS, {args.rounds} rounds, median seconds "
              f"(load at end {load_average()})")
        print(f"{'':8}{'dockyard':>10}{'distribution':>14}{'dy/dist':>9}")
        for op in ("push", "pull"):
            dy_t, dist_t = med["dockyard"][op], med["distribution"][op]
            print(f"{op:8}{dy_t:>10.2f}{dist_t:>14.2f}{dy_t / dist_t:>9.2f}")
        print("dockyard with auth (admin token per request), distribution without: a speed-up must not skip auth")
    finally:
        teardown(procs, root, args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
