"""`dockyard save` / `load` of a 200 MB image against `podman save` / `podman load`.

    .venv/bin/python bench/archives.py [--rounds 3] [--mb 200]

One image (busybox-static plus one layer of `--mb` MB of random bytes, so that no
compression helps either side) is put in both: pushed by skopeo into a dockyard stack
(`dockyard up` on free ports in a temp dir), and pulled by podman from an OCI layout
into its own storage (private configs of ../shared/PEERS.md). Then, in alternating
order, several rounds of:

- save: `dockyard save -o F IMAGE` against `podman save -o F IMAGE` (docker-archive,
  podman's default); the file is removed after each round;
- load (new layers): one archive, made afresh for the round (busybox-static plus a new
  layer of `--mb` random MB, written as `skopeo copy ... docker-archive:` writes it), is
  loaded by `dockyard load -i F` and by `podman load -i F`: neither side has seen the big
  layer, so both really store its bytes;
- load (present): the same archive loaded once more by each: every layer and the image
  are there already (what a re-load costs: dockyard asks the registry first, podman its
  storage).

An earlier version loaded dockyard's archive under a new name (a real upload) but podman's
after `podman rmi` of one of the image's two names (its layers stayed: no real load), so
it compared an upload with a re-tag.

Wall time of each CLI call, start-up included; medians and the ratio dockyard / podman.
Everything is removed at the end (stack, podman storage).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from examples.busybox import busybox_rootfs, oci_layout, skopeo_env, tar_dir  # noqa: E402
from tests.e2e.conftest import start_stack, stop_stack  # noqa: E402

PEERS = Path(os.environ.get("DOCKYARD_PEERS_DIR", Path(__file__).resolve().parents[2] / "shared" / "peers"))
DOCKYARD = [sys.executable, "-m", "services.cli.main"]


def sh(argv: list[str], env: dict | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    sh(argv, env)
    return time.perf_counter() - t0


def big_layer(mb: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = os.urandom(mb << 20)
        ti = tarfile.TarInfo("big.bin")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def fresh_archive(path: Path, base: bytes, mb: int, name: str) -> None:
    """A docker archive as skopeo writes one (`<diff id>.tar`, `<config digest>.json`) with a new big layer."""
    layers = [base, big_layer(mb)]
    diff_ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    manifest = [{"Config": cfg_name, "RepoTags": [name], "Layers": [d[7:] + ".tar" for d in diff_ids]}]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for member, data in [*((d[7:] + ".tar", x) for d, x in zip(diff_ids, layers)), (cfg_name, cfg),
                             ("manifest.json", json.dumps(manifest).encode())]:
            ti = tarfile.TarInfo(member)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def setup_podman(root: Path) -> dict:
    root.mkdir(parents=True)
    for name in ("containers.conf", "storage.conf", "registries.conf"):
        text = (PEERS / name).read_text().replace("@ROOT@", str(root)).replace("@REGPORT@", "1")
        (root / name).write_text(text)
    (root / "networks").mkdir()
    shutil.copy(PEERS / "network.json", root / "networks" / "network.json")
    (root / "bin").mkdir()
    shutil.copy(PEERS / "crun-privmnt", root / "bin" / "crun-privmnt")
    (root / "tmp").mkdir()
    return {**os.environ, "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"), "TMPDIR": str(root / "tmp")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mb", type=int, default=200)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/archives.py needs root", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="dyarch-bench-"))
    stack = None
    penv = None
    try:
        layout = tmp / "layout"
        base = tar_dir(busybox_rootfs(tmp / "rootfs"))
        oci_layout(layout, [base, big_layer(args.mb)], tag="latest")
        stack = start_stack(tmp / "stack")
        env = stack.env
        sh(["skopeo", "copy", "--dest-tls-verify=false", f"--dest-creds={stack.admin_creds}", f"oci:{layout}:latest",
            f"docker://{stack.registry_addr}/library/big:latest"], skopeo_env(tmp / "home"))
        penv = setup_podman(tmp / "podman")
        sh(["podman", "pull", f"oci:{layout}:latest"], penv)
        pimage = sh(["podman", "images", "-q"], penv).stdout.split()[0]
        sh(["podman", "tag", pimage, "localhost/big:latest"], penv)
        sh([sys.executable, "-m", "compileall", "-q", "shared", "services"])

        cases = ("save", "load (new layers)", "load (present)")
        times: dict[tuple[str, str], list[float]] = {(c, t): [] for c in cases for t in ("dockyard", "podman")}
        sizes = {}
        for r in range(args.rounds):
            fresh = tmp / "fresh.tar"
            fresh_archive(fresh, base, args.mb, f"fresh{r}:latest")
            order = ("dockyard", "podman") if r % 2 == 0 else ("podman", "dockyard")
            for tool in order:
                out = tmp / f"{tool}.tar"
                if tool == "dockyard":
                    times[("save", tool)].append(timed([*DOCKYARD, "save", "-o", str(out), "big:latest"], env))
                    for case in ("load (new layers)", "load (present)"):
                        times[(case, tool)].append(timed([*DOCKYARD, "load", "-q", "-i", str(fresh)], env))
                else:
                    times[("save", tool)].append(timed(["podman", "save", "-o", str(out), "localhost/big:latest"],
                                                       penv))
                    for case in ("load (new layers)", "load (present)"):
                        times[(case, tool)].append(timed(["podman", "load", "-q", "-i", str(fresh)], penv))
                    sh(["podman", "rmi", "-f", f"fresh{r}:latest"], penv)
                sizes[tool] = out.stat().st_size
                out.unlink()
            fresh.unlink()
        print(f"save/load of a {args.mb} MB image, {args.rounds} rounds, medians in seconds "
              f"(archives: dockyard {sizes['dockyard'] / 1e6:.0f} MB, podman {sizes['podman'] / 1e6:.0f} MB)")
        print(f"{'case':<20}{'dockyard':>10}{'podman':>10}{'ratio':>8}  (ratio range)")
        for case in cases:
            d = statistics.median(times[(case, "dockyard")])
            p = statistics.median(times[(case, "podman")])
            ratios = [a / b for a, b in zip(times[(case, "dockyard")], times[(case, "podman")])]
            print(f"{case:<20}{d:>10.3f}{p:>10.3f}{d / p:>8.2f}  ({min(ratios):.2f}-{max(ratios):.2f})")
        print("goal: ratio <= 0.7")
        return 0
    finally:
        if penv is not None:
            sh(["podman", "system", "reset", "-f"], penv, check=False)
        if stack is not None:
            stop_stack(stack)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
