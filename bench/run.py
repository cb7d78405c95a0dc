"""Container start benchmark: `dockyard run` against `podman run`, same busybox image, same host.

    .venv/bin/python bench/run.py [--rounds 5]

Sets up, in a temporary directory: a nats-server, one runtime-agent process (its own
bridge `dyagbench0`), a CNCF registry on loopback holding the busybox-static image
(pushed by skopeo), and podman with private configs (../shared/PEERS.md) and the
same rootfs imported as localhost/busybox. A cold run (the agent has not pulled the
image yet) is measured once and reported apart. Then, alternating which tool goes
first each round:

  rm-none     run --rm --network none IMAGE true
  rm-bridge   run --rm IMAGE true                     (each tool's default bridge)
  publish     run -d -p 127.0.0.1:H:8080 IMAGE httpd  until the first HTTP 200
  lifecycle   run -d IMAGE sleep 600; stop -t 0; rm
  stats, cp   stats --no-stream, cp 100 MB in and out (bench/verbs_cases.py)
  exec-true   exec CONTAINER true                     (a running sleep container)
  run-i-echo  echo hello | run -i --rm IMAGE cat      (stdin in, stdout back, exit)
  start-up    `python -c pass`, `--version`, `ps`     (process time; bench/startup_cases.py)

`--cases run,interactive,startup,verbs` picks groups (default: all).

Prints medians and the ratios dockyard/podman (target: every ratio <= 0.5). Puts
ip_forward and netavark's chains back as it found them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from examples.busybox import busybox_layout, busybox_rootfs, skopeo_env, tar_dir  # noqa: E402
from shared.natsserver import EmbeddedNats, free_port  # noqa: E402

# the peer config templates of ../shared/PEERS.md, beside the checkout
PEERS = Path(os.environ.get("DOCKYARD_PEERS_DIR", Path(__file__).resolve().parents[2] / "shared" / "peers"))
# The installed command, as users run it (no runpy); `-m` where it is not installed.
_SCRIPT = Path(sys.executable).with_name("dockyard")
DOCKYARD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "services.cli.main"]


def sh(argv: list[str], env: dict | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    sh(argv, env)
    return time.perf_counter() - t0


def wait_http(url: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class Tool:
    def __init__(self, name: str, argv: list[str], env: dict, image: str):
        self.name, self.argv, self.env, self.image = name, argv, env, image

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh([*self.argv, *args], self.env, check=check)

    def rm_none(self) -> float:
        return timed([*self.argv, "run", "--rm", "--network", "none", self.image, "true"], self.env)

    def rm_bridge(self) -> float:
        return timed([*self.argv, "run", "--rm", self.image, "true"], self.env)

    def publish(self) -> float:
        port = free_port()
        t0 = time.perf_counter()
        cid = self.run("run", "-d", "-p", f"127.0.0.1:{port}:8080", self.image,
                       "httpd", "-f", "-p", "8080", "-h", "/etc").stdout.strip()
        wait_http(f"http://127.0.0.1:{port}/passwd")
        took = time.perf_counter() - t0
        self.run("rm", "-f", cid)
        return took

    def lifecycle(self) -> float:
        t0 = time.perf_counter()
        cid = self.run("run", "-d", "--network", "none", self.image, "sleep", "600").stdout.strip()
        self.run("stop", "-t", "0", cid)
        self.run("rm", cid)
        return time.perf_counter() - t0


# ---- interactive: exec and run -i (their own table; the targets are made once per tool) ----

def exec_true(tool: Tool, target: str) -> float:
    return timed([*tool.argv, "exec", target, "true"], tool.env)


def run_i_echo(tool: Tool) -> float:
    """`echo hello | run -i --rm IMAGE cat`: stdin in, the same bytes out, exit."""
    t0 = time.perf_counter()
    p = subprocess.run([*tool.argv, "run", "-i", "--rm", "--network", "none", tool.image, "cat"], env=tool.env,
                       input=b"hello\n", capture_output=True, timeout=120)
    took = time.perf_counter() - t0
    if p.returncode != 0 or p.stdout != b"hello\n":
        raise RuntimeError(f"{tool.name} run -i: {p.returncode} {p.stdout!r} {p.stderr[-500:]!r}")
    return took


def interactive_cases(tools: list[Tool], rounds: int) -> float:
    """Print the exec and run -i table; the worse ratio."""
    targets = {t.name: t.run("run", "-d", "--network", "none", t.image, "sleep", "600").stdout.strip()
               for t in tools}
    for t in tools:
        exec_true(t, targets[t.name])  # warm-up
    cases = {"exec-true": lambda t: exec_true(t, targets[t.name]), "run-i-echo": run_i_echo}
    times: dict[tuple[str, str], list[float]] = {(c, t.name): [] for c in cases for t in tools}
    for r in range(rounds):
        for case, fn in cases.items():
            for t in (tools if r % 2 == 0 else tools[::-1]):
                times[(case, t.name)].append(fn(t))
    for t in tools:
        t.run("rm", "-f", targets[t.name], check=False)
    print(f"{'case':<12}{'dockyard':>10}{'podman':>10}{'ratio':>8}   (interactive)")
    worst = 0.0
    for case in cases:
        d = statistics.median(times[(case, "dockyard")])
        p = statistics.median(times[(case, "podman")])
        worst = max(worst, d / p)
        print(f"{case:<12}{d:>10.3f}{p:>10.3f}{d / p:>8.2f}")
    return worst


def setup_podman(root: Path, regport: int, rootfs_tar: Path) -> dict:
    root.mkdir(parents=True)
    for name in ("containers.conf", "storage.conf", "registries.conf"):
        text = (PEERS / name).read_text().replace("@ROOT@", str(root)).replace("@REGPORT@", str(regport))
        (root / name).write_text(text)
    (root / "networks").mkdir()
    shutil.copy(PEERS / "network.json", root / "networks" / "network.json")
    (root / "bin").mkdir()
    shutil.copy(PEERS / "crun-privmnt", root / "bin" / "crun-privmnt")
    (root / "tmp").mkdir()
    env = {**os.environ, "CONTAINERS_CONF": str(root / "containers.conf"),
           "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
           "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
           "BUILDAH_RUNTIME": "/usr/sbin/runc", "TMPDIR": str(root / "tmp")}
    sh(["podman", "import", "--change", 'CMD ["/bin/sh"]', str(rootfs_tar), "localhost/busybox:latest"], env)
    return env


def netavark_chains() -> dict[str, list[str]]:
    out = {}
    for table in ("nat", "filter"):
        text = sh(["iptables-save", "-t", table]).stdout
        out[table] = [ln[1:].split()[0] for ln in text.splitlines() if ln.startswith(":NETAVARK")]
    return out


def restore_host(ip_forward: str, chains_before: dict[str, list[str]]) -> None:
    Path("/proc/sys/net/ipv4/ip_forward").write_text(ip_forward)
    for table, chains in netavark_chains().items():
        new = [c for c in chains if c not in chains_before.get(table, [])]
        text = sh(["iptables-save", "-t", table]).stdout
        for ln in text.splitlines():  # jumps into the chains first, then the chains
            if ln.startswith("-A ") and any(f"-j {c}" in ln for c in new):
                sh(["iptables", "-t", table, *shlex.split(ln.replace("-A ", "-D ", 1))], check=False)
        for c in new:
            sh(["iptables", "-t", table, "-F", c], check=False)
        for c in new:
            sh(["iptables", "-t", table, "-X", c], check=False)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cases", default="run,interactive,startup,verbs",
                    help="comma-separated groups: run, interactive, startup, verbs")
    args = ap.parse_args()
    groups = set(args.cases.split(","))
    if os.geteuid() != 0:
        print("bench/run.py needs root", file=sys.stderr)
        return 2
    ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    chains_before = netavark_chains()
    tmp = Path(tempfile.mkdtemp(prefix="dyag-bench-"))
    procs: list[subprocess.Popen] = []
    nats = EmbeddedNats(tmp / "nats")
    agent_env = None
    try:
        nats.start()
        regport = free_port()
        (tmp / "registry.yml").write_text(
            f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {tmp / 'reg'}}}}}\n"
            f"http: {{addr: 127.0.0.1:{regport}}}\n")
        procs.append(subprocess.Popen(["docker-registry", "serve", str(tmp / "registry.yml")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        busybox_layout(tmp / "layout", tmp / "work")
        time.sleep(0.5)
        sh(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp / 'layout'}:latest",
            f"docker://127.0.0.1:{regport}/library/busybox:latest"], skopeo_env(tmp / "home"))
        env = {**os.environ, "DOCKYARD_NATS_URL": nats.url, "DOCKYARD_REGISTRY_ADDR": f"127.0.0.1:{regport}",
               "DOCKYARD_DATA_DIR": str(tmp / "dockyard")}
        agent_env = {**env, "DOCKYARD_AGENT_ID": "bench", "DOCKYARD_BRIDGE": "dyagbench0",
                     "DOCKYARD_SUBNET": "10.233.0.0/24", "DOCKYARD_NET_PREFIX": "dyagbench"}
        log = open(tmp / "agent.log", "wb")
        agent = subprocess.Popen([*DOCKYARD, "serve", "runtime-agent"], env=agent_env, cwd=REPO,
                                 stdout=log, stderr=subprocess.STDOUT)
        procs.append(agent)
        deadline = time.monotonic() + 60
        while b"ready" not in (tmp / "agent.log").read_bytes():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp / "agent.log").read_text())
            time.sleep(0.05)
        # The agent picks its OCI runtime by timing both at start (shared/runtime/probe.py): on a
        # loaded machine it may pick runc, whose exec costs several times crun's. Say which.
        beat = json.loads(sh([*DOCKYARD, "--json", "agents"], env).stdout)[0]
        print(f"agent runtime: {beat['runtime']} (DOCKYARD_RUNTIME=crun|runc forces one)")
        (tmp / "rootfs.tar").write_bytes(tar_dir(busybox_rootfs(tmp / "podroot")))
        podman_env = setup_podman(tmp / "podman", regport, tmp / "rootfs.tar")
        # What `pip install` does for a real install: byte-compile dockyard's modules, so that
        # a command does not recompile its imports each time (PYTHONDONTWRITEBYTECODE=1
        # or a read-only checkout would otherwise leave them uncompiled for good).
        sh([sys.executable, "-m", "compileall", "-q", "shared", "services"])
        dockyard = Tool("dockyard", DOCKYARD, env, "busybox")
        podman = Tool("podman", ["podman"], podman_env, "localhost/busybox")

        # Cold: the image is not on the host yet (podman pulls it from the same registry).
        cold_d = dockyard.rm_none()
        cold_p = timed(["podman", "run", "--rm", "--network", "none", "--tls-verify=false",
                        f"127.0.0.1:{regport}/library/busybox:latest", "true"], podman_env)
        # Warm-up: first runs pay page-cache misses and lazy set-up (bridges) on both sides.
        for t in (dockyard, podman):
            t.rm_bridge()

        load_before = os.getloadavg()
        cases = ("rm_none", "rm_bridge", "publish", "lifecycle") if "run" in groups else ()
        times: dict[tuple[str, str], list[float]] = {(c, t.name): [] for c in cases for t in (dockyard, podman)}
        for r in range(args.rounds):
            order = (dockyard, podman) if r % 2 == 0 else (podman, dockyard)
            for case in cases:
                for t in order:
                    times[(case, t.name)].append(getattr(t, case)())
        load = os.getloadavg()
        print(f"dockyard run vs podman run, {args.rounds} rounds, medians in seconds "
              f"(load {load_before[0]:.2f} before, {load[0]:.2f} after)")
        print(f"{'case':<12}{'dockyard':>10}{'podman':>10}{'ratio':>8}")
        worst = 0.0
        for case in cases:
            d = statistics.median(times[(case, "dockyard")])
            p = statistics.median(times[(case, "podman")])
            worst = max(worst, d / p)
            print(f"{case:<12}{d:>10.3f}{p:>10.3f}{d / p:>8.2f}")
        print(f"{'cold pull':<12}{cold_d:>10.3f}{cold_p:>10.3f}{cold_d / cold_p:>8.2f}   (reported apart)")
        if "interactive" in groups:
            worst = max(worst, interactive_cases([dockyard, podman], args.rounds))  # interactive
        if "startup" in groups:  # cli11: process time of the lightest commands
            from bench import startup_cases
            worst = max(worst, startup_cases.run([dockyard, podman], max(args.rounds, 10)))
        print(f"worst ratio {worst:.2f} (target <= 0.5)")
        if "verbs" in groups:
            from bench import verbs_cases  # verbs: stats --no-stream, cp 100 MB each way
            print(f"worst verbs ratio {verbs_cases.run([dockyard, podman], args.rounds, tmp):.2f} (target <= 0.5)")
        return 0
    finally:
        if agent_env is not None:
            ids = sh([*DOCKYARD, "ps", "-a", "-q", "--no-trunc"], agent_env, check=False).stdout.split()
            if ids:
                sh([*DOCKYARD, "rm", "-f", *ids], agent_env, check=False)
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        nats.stop()
        if (tmp / "podman").exists():
            penv = {**os.environ, "CONTAINERS_CONF": str(tmp / "podman/containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(tmp / "podman/storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(tmp / "podman/registries.conf")}
            sh(["podman", "rm", "-af"], penv, check=False)
            sh(["podman", "system", "reset", "-f"], penv, check=False)
        restore_host(ip_forward, chains_before)
        subprocess.run(["ip", "link", "del", "dypeer0"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
