"""`dockyard build` against `buildah bud --layers`: cold, warm, one small file changed.

    .venv/bin/python bench/build.py [--rounds 5] [--keep]

Both build the same Dockerfile and context, from the same busybox-static rootfs
(imported into each: `dockyard import`, `podman import`). Three cases, each
measured for both tools in alternating order, several rounds; medians and the
ratio dockyard / buildah:

- cold: empty build cache, base image kept (dockyard: a prune of every cache
  record and local layer, unpacked contexts dropped, the context and layer
  blobs unlinked from their repositories so their bytes travel again;
  buildah: every image but the base removed);
- warm: the same build again, nothing changed;
- changed: one small context file changed (only the steps from its COPY rerun);
- parallel (dockyard only): three independent stages of `RUN sleep 1` and a
  final stage copying from each, `--no-cache`: the wall time shows the stages
  overlap (BuildKit's scheduling);
- remote (dockyard only): a cold build (as above) with `--cache-from` a cache
  that `--cache-to type=registry,mode=max` exported, against the plain cold build.

Wall time of each CLI call, start-up included. dockyard runs as its own stack
(`dockyard up` on free ports in a temp dir); buildah with the private configs of
/work/shared/peers (PEERS.md). Everything is removed at the end: the stack, the
peer storage (and its mounts), netavark's chains and bridge, and ip_forward put back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from examples.busybox import busybox_rootfs, tar_dir  # noqa: E402
from shared.natsserver import free_port  # noqa: E402
from tests.e2e.conftest import Stack, start_stack, stop_stack  # noqa: E402

# the peer config templates of ../shared/PEERS.md, beside the checkout
PEERS = Path(os.environ.get("DOCKYARD_PEERS_DIR", Path(__file__).resolve().parents[2] / "shared" / "peers"))
TAG = "dybd-bench:latest"
CACHE_REF = "dybd-bench-cache:buildcache"
# Three independent stages of 1 s each: built in parallel the whole build takes ~1 s, not 3.
PARALLEL_DOCKERFILE = "".join(f"FROM busybox:latest AS s{i}\nRUN sleep 1 && echo {i} > /{i}\n" for i in range(3)) + (
    "FROM busybox:latest\n" + "".join(f"COPY --from=s{i} /{i} /\n" for i in range(3)))
SMALL_FILES = 500
BIG_BYTES = 50 << 20
CHANGED = "src/f042.txt"

DOCKERFILE = """\
FROM busybox:latest
ENV APP=/app GREETING=hello
WORKDIR /app
COPY big.bin ./
COPY src/ ./src/
RUN mkdir gen && for i in $(seq 1 200); do echo "generated $i" > gen/f$i.txt; done
RUN rm big.bin
EXPOSE 8080
ENTRYPOINT ["/bin/sh", "-c", "ls /app"]
"""


def make_context(ctx: Path) -> None:
    rnd = random.Random(42)
    (ctx / "src").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    for i in range(SMALL_FILES):
        (ctx / "src" / f"f{i:03d}.txt").write_bytes(rnd.randbytes(rnd.randint(100, 2000)))
    # Incompressible: gzip gets no free ride.
    (ctx / "big.bin").write_bytes(rnd.randbytes(BIG_BYTES))


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return dt


# --------------------------------------------------------------------------- dockyard


class Dockyard:
    name = "dockyard"

    def __init__(self, tmp: Path, rootfs_tar: Path, ctx: Path):
        self.stack: Stack = start_stack(tmp / "stack")
        self.ctx = ctx
        self.cli(["import", str(rootfs_tar), "busybox:latest"])
        self.last: dict = {}

    def cli(self, args: list[str]) -> subprocess.CompletedProcess:
        return self.stack.cli(*args, timeout=600)

    def build(self, ctx: Path | None = None, *extra: str) -> float:
        cmd = [sys.executable, "-m", "services.cli.main", "build", "--json", "-t", TAG, *extra, str(ctx or self.ctx)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=self.stack.env, capture_output=True, text=True, timeout=600, cwd=REPO)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"dockyard build exited {p.returncode}:\n{p.stderr[-3000:]}")
        self.last = json.loads(p.stdout)
        return dt

    def make_cold(self) -> None:
        asyncio.run(self._make_cold())
        shutil.rmtree(self.stack.data_dir / "builder" / "contexts", ignore_errors=True)
        (self.stack.data_dir / "builder" / "contexts").mkdir()

    async def _make_cold(self) -> None:
        import aiohttp

        from shared import bus
        from shared.messages.builder import CACHE_REPOSITORY, CONTEXT_REPOSITORY
        from shared.messages.gc import PruneReply, PruneRequest
        from shared.subjects import BUILDER_PRUNE
        from shared.registry.auth import bus_token_provider
        from shared.registry.client import RegistryClient

        nc = await bus.connect(self.stack.nats_url)
        try:
            b = bus.BusClient(nc)
            await b.request(BUILDER_PRUNE, PruneRequest(max_bytes=0), PruneReply, timeout=120)
            if not self.last:
                return
            async with aiohttp.ClientSession() as session:
                rc = RegistryClient(session, self.stack.registry_url, token_provider=bus_token_provider(b, "bench"))
                unlink = [(CONTEXT_REPOSITORY, d) for d in self._context_blobs()]
                unlink += [(repo, s["layer"]) for s in self.last["steps"] if s["layer"]
                           for repo in ("library/dybd-bench", CACHE_REPOSITORY)]
                for repo, digest in unlink:
                    resp = await rc._send("DELETE", f"/v2/{repo}/blobs/{digest}", [f"repository:{repo}:delete"],
                                          ok=(202, 404), what=f"unlink {repo}@{digest}")
                    resp.release()
        finally:
            await nc.drain()

    def _context_blobs(self) -> list[str]:
        """The context tar and the big files it names, as the CLI uploads them."""
        from shared.buildcontext import context_excludes, pack_context
        external: dict[str, str] = {}
        with tempfile.TemporaryFile() as f:
            digest, _ = pack_context(str(self.ctx), f, context_excludes(None), external=external)
        return [digest, *external]

    def close(self) -> None:
        stop_stack(self.stack)


# --------------------------------------------------------------------------- buildah


class Buildah:
    name = "buildah"

    def __init__(self, tmp: Path, rootfs_tar: Path, ctx: Path):
        self.root = tmp / "peer"
        self.ctx = ctx
        for d in ("networks", "bin", "tmp", "run", "storage"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        port = str(free_port())
        for name in ("containers.conf", "storage.conf", "registries.conf"):
            text = (PEERS / name).read_text().replace("@ROOT@", str(self.root)).replace("@REGPORT@", port)
            (self.root / name).write_text(text)
        shutil.copy(PEERS / "network.json", self.root / "networks" / "network.json")
        shutil.copy(PEERS / "crun-privmnt", self.root / "bin" / "crun-privmnt")
        os.chmod(self.root / "bin" / "crun-privmnt", 0o755)
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.root / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf"),
                    "BUILDAH_RUNTIME": "/usr/sbin/runc", "TMPDIR": str(self.root / "tmp")}
        timed(["podman", "import", "--change", 'CMD ["/bin/sh"]', str(rootfs_tar), "localhost/busybox:latest"],
              self.env)
        self.base_id = self.run(["buildah", "images", "-q", "--no-trunc", "localhost/busybox:latest"]).strip()

    def run(self, cmd: list[str]) -> str:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=True, timeout=300).stdout

    def build(self) -> float:
        return timed(["buildah", "bud", "--layers", "--pull=never", "-t", TAG, "-f",
                      str(self.ctx / "Dockerfile"), str(self.ctx)], self.env)

    def make_cold(self) -> None:
        self.run(["buildah", "rm", "--all"])
        ids = set(self.run(["buildah", "images", "-a", "-q", "--no-trunc"]).split()) - {self.base_id}
        if ids:
            self.run(["buildah", "rmi", "-f", *ids])

    def close(self) -> None:
        subprocess.run(["buildah", "rm", "--all"], env=self.env, capture_output=True)
        subprocess.run(["podman", "system", "reset", "--force"], env=self.env, capture_output=True, timeout=120)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            mnt = line.split()[4]
            if mnt.startswith(str(self.root)):
                subprocess.run(["umount", "-l", mnt], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- host state


class HostState:
    """ip_forward and netavark's iptables chains and bridge, put back as they were."""

    def __init__(self):
        self.ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        self.chains = {t: self._netavark_rules(t) for t in ("filter", "nat")}

    @staticmethod
    def _netavark_rules(table: str) -> list[str]:
        out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if "NETAVARK" in line]

    def restore(self) -> None:
        for table, before in self.chains.items():
            now = self._netavark_rules(table)
            # Rules in built-in chains that jump to netavark's first, then its own chains.
            for rule in now:
                if rule.startswith("-A ") and rule not in before and not rule.split()[1].startswith("NETAVARK"):
                    subprocess.run(["iptables", "-t", table, "-D", *shlex.split(rule)[1:]], capture_output=True)
            new_chains = [r.split()[1] for r in now if r.startswith("-N ") and r not in before]
            for chain in new_chains:
                subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
            for chain in new_chains:
                subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)
        subprocess.run(["ip", "link", "del", "dypeer0"], capture_output=True)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward)


# --------------------------------------------------------------------------- the run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", choices=("dockyard", "buildah"), help="measure one tool (for profiling)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (the stack's logs)")
    args = ap.parse_args()

    host = HostState()
    tmp = Path(tempfile.mkdtemp(prefix="dybd-bench-"))
    tools: list = []
    try:
        rootfs_tar = tmp / "busybox.tar"
        rootfs_tar.write_bytes(tar_dir(busybox_rootfs(tmp / "rootfs")))
        ctx = tmp / "ctx"
        make_context(ctx)
        if args.only != "buildah":
            tools.append(Dockyard(tmp, rootfs_tar, ctx))
        if args.only != "dockyard":
            tools.append(Buildah(tmp, rootfs_tar, ctx))
        for t in tools:  # warm-up: first-run costs (runtime probe, page cache) off the clock
            t.build()
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            order = tools if r % 2 == 0 else list(reversed(tools))
            for t in order:
                t.make_cold()
                times.setdefault((t.name, "cold"), []).append(t.build())
            for t in order:
                times.setdefault((t.name, "warm"), []).append(t.build())
            (ctx / CHANGED).write_text(f"round {r}\n")
            for t in order:
                times.setdefault((t.name, "changed"), []).append(t.build())
            print(f"round {r + 1}: " + ", ".join(f"{n}/{c} {v[-1]:.2f}s" for (n, c), v in times.items()),
                  file=sys.stderr)
        report(times, [t.name for t in tools])
        dy = next((t for t in tools if t.name == "dockyard"), None)
        if dy is not None:
            par = tmp / "parallel"
            par.mkdir()
            (par / "Dockerfile").write_text(PARALLEL_DOCKERFILE)
            walls = [dy.build(par, "--no-cache") for _ in range(args.rounds)]
            print(f"{'parallel':<10}{statistics.median(walls):>16.3f}  (3 stages of RUN sleep 1, --no-cache; "
                  "sequential would be >= 3 s)")
            # Remote cache: exported once, then a cold builder (records, layers, context gone) imports it.
            dy.build(None, "--cache-to", f"type=registry,ref={CACHE_REF},mode=max")
            remote = []
            for _ in range(args.rounds):
                dy.make_cold()
                remote.append(dy.build(None, "--cache-from", f"type=registry,ref={CACHE_REF}"))
            print(f"{'remote':<10}{statistics.median(remote):>16.3f}  (cold, --cache-from; plain cold "
                  f"{statistics.median(times[('dockyard', 'cold')]):.3f} s)")
    finally:
        for t in tools:
            t.close()
        host.restore()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


TARGETS = {"cold": 0.5, "warm": 0.2, "changed": 0.3}


def report(times: dict[tuple[str, str], list[float]], names: list[str]) -> None:
    print(f"{'case':<10}" + "".join(f"{n + ' (s)':>16}" for n in names) + f"{'ratio':>10}{'target':>9}")
    for case in ("cold", "warm", "changed"):
        med = {n: statistics.median(times[(n, case)]) for n in names}
        line = f"{case:<10}" + "".join(f"{med[n]:>16.3f}" for n in names)
        if len(names) == 2:
            ratio = med["dockyard"] / med["buildah"]
            line += f"{ratio:>10.2f}{'<= ' + str(TARGETS[case]):>9}"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
