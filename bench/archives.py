"""`dockyard save` / `load` of a 200 MB image against `podman save` / `podman load`.

    .venv/bin/python bench/archives.py [--rounds 3] [--mb 200]

One image (busybox-static plus one layer of `--mb` MB of random bytes, so that no
compression helps either side) is put in both: pushed by skopeo into a dockyard stack
(`dockyard up` on free ports in a temp dir), and pulled by podman from an OCI layout
into its own storage (private configs of ../shared/PEERS.md). Then, in alternating
order, several rounds of:

- save: `dockyard save -o F IMAGE` against `podman save -o F IMAGE` (docker-archive,
  podman's default); the file is removed after each round;
- load: `dockyard load -i F` into a repository the stack registry has not seen (the
  archive's names are changed before each round, outside the timing: the registry
  links blobs per repository, so an old name would skip the upload), against
  `podman load -i F` after `podman rmi` of the image.

Wall time of each CLI call, start-up included; medians and the ratio dockyard / podman.
Everything is removed at the end (stack, podman storage).
"""

from __future__ import annotations

import argparse
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


def renamed(src: Path, dst: Path, name: str) -> None:
    """A copy of a `dockyard save` archive whose images are called `name` (blobs untouched)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tout:
        for m in tin.getmembers():
            f = tin.extractfile(m)
            if m.name == "manifest.json":
                entries = json.load(f)
                for e in entries:
                    e["RepoTags"] = [name]
                data = json.dumps(entries).encode()
            elif m.name == "index.json":
                index = json.load(f)
                for d in index["manifests"]:
                    d["annotations"] = {"io.containerd.image.name": f"docker.io/library/{name}",
                                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
                data = json.dumps(index).encode()
            elif m.name == "repositories":
                data = json.dumps({}).encode()
            else:
                tout.addfile(m, f)
                continue
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))


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
        oci_layout(layout, [tar_dir(busybox_rootfs(tmp / "rootfs")), big_layer(args.mb)], tag="latest")
        stack = start_stack(tmp / "stack")
        env = stack.env
        sh(["skopeo", "copy", "--dest-tls-verify=false", f"--dest-creds={stack.admin_creds}", f"oci:{layout}:latest",
            f"docker://{stack.registry_addr}/library/big:latest"], skopeo_env(tmp / "home"))
        penv = setup_podman(tmp / "podman")
        sh(["podman", "pull", f"oci:{layout}:latest"], penv)
        pimage = sh(["podman", "images", "-q"], penv).stdout.split()[0]
        sh(["podman", "tag", pimage, "localhost/big:latest"], penv)
        sh([sys.executable, "-m", "compileall", "-q", "shared", "services"])

        times: dict[tuple[str, str], list[float]] = {(c, t): [] for c in ("save", "load") for t in ("dockyard", "podman")}
        sizes = {}
        for r in range(args.rounds):
            order = ("dockyard", "podman") if r % 2 == 0 else ("podman", "dockyard")
            for tool in order:
                out = tmp / f"{tool}.tar"
                if tool == "dockyard":
                    times[("save", tool)].append(timed([*DOCKYARD, "save", "-o", str(out), "big:latest"], env))
                    renamed(out, tmp / "renamed.tar", f"big{r}:latest")
                    times[("load", tool)].append(timed([*DOCKYARD, "load", "-q", "-i", str(tmp / "renamed.tar")],
                                                       env))
                    (tmp / "renamed.tar").unlink()
                else:
                    times[("save", tool)].append(timed(["podman", "save", "-o", str(out), "localhost/big:latest"],
                                                       penv))
                    sh(["podman", "rmi", "-f", "localhost/big:latest"], penv)
                    times[("load", tool)].append(timed(["podman", "load", "-q", "-i", str(out)], penv))
                sizes[tool] = out.stat().st_size
                out.unlink()
        print(f"save/load of a {args.mb} MB image, {args.rounds} rounds, medians in seconds "
              f"(archives: dockyard {sizes['dockyard'] / 1e6:.0f} MB, podman {sizes['podman'] / 1e6:.0f} MB)")
        print(f"{'case':<8}{'dockyard':>10}{'podman':>10}{'ratio':>8}")
        for case in ("save", "load"):
            d = statistics.median(times[(case, "dockyard")])
            p = statistics.median(times[(case, "podman")])
            print(f"{case:<8}{d:>10.3f}{p:>10.3f}{d / p:>8.2f}")
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
