"""Pick the OCI runtime once at start, by running a container with each candidate.

crun is usually the faster of the two, but on a hybrid cgroup host (v1
controllers plus a cgroup2 mount) it refuses to run unless it sees no cgroup2
mount: a private mount namespace without it (`unshare -m`, `umount`) fixes
that for the one call and changes nothing on the host. Whether that wrapper
is needed, and whether each runtime works at all with the config we generate,
is found by running a tiny container; the faster working runtime wins.
`DOCKYARD_RUNTIME=crun|runc` forces one (it is still checked to work).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from shared.errors import InvalidArgument, Unavailable
from shared.runtime import cgroups
from shared.runtime.spec import BindMount, ContainerSpec, build_config

ENV_OVERRIDE = "DOCKYARD_RUNTIME"
CANDIDATES = ("crun", "runc")
_PROBE_RUNS = 3
_PROBE_CGROUP_PARENT = "/dockyard-probe"
_PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class RuntimeInfo:
    """A usable runtime: `argv` is the command prefix, global options and a verb follow."""

    name: str
    argv: tuple[str, ...]
    version: str
    start_ms: float | None = None  # median `run` of a no-op container, when measured

    def command(self, root: str | os.PathLike, *args: str) -> list[str]:
        return [*self.argv, "--root", os.fspath(root), *args]


def probe_runtime(env: dict[str, str] | None = None) -> RuntimeInfo:
    """The runtime to use on this host (blocking; call once at start)."""
    env = os.environ if env is None else env
    forced = env.get(ENV_OVERRIDE, "").strip()
    if forced and forced not in CANDIDATES:
        raise InvalidArgument(f"{ENV_OVERRIDE}={forced!r}: expected one of {', '.join(CANDIDATES)}")
    names = (forced,) if forced else CANDIDATES
    errors: list[str] = []
    working: list[RuntimeInfo] = []
    for name in names:
        try:
            info = _describe(name)
            runs = 1 if forced else _PROBE_RUNS
            working.append(_measure(info, runs))
        except Unavailable as e:
            errors.append(f"{name}: {e.message}")
    if not working:
        raise Unavailable("no working OCI runtime: " + "; ".join(errors))
    return min(working, key=lambda i: i.start_ms or 0.0)


def _describe(name: str) -> RuntimeInfo:
    path = shutil.which(name)
    if path is None:
        raise Unavailable("not installed")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=_PROBE_TIMEOUT, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"{path} --version failed: {e}") from e
    first = out.splitlines()[0] if out else ""
    version = first.split("version", 1)[-1].strip() or "unknown"
    return RuntimeInfo(name=name, argv=_argv(name, path), version=version)


def _argv(name: str, path: str) -> tuple[str, ...]:
    if name != "crun":
        return (path,)
    mounts = cgroups.cgroup_mounts()
    if not cgroups.is_hybrid(mounts):
        return (path,)
    unshare = shutil.which("unshare")
    if unshare is None:
        raise Unavailable("hybrid cgroups need `unshare` (util-linux) to hide cgroup2 from crun")
    umounts = "; ".join(f"umount {shlex_quote(str(m.path))} 2>/dev/null"
                        for m in mounts if m.version == 2)
    # One private mount namespace per call (~4 ms): crun then sees v1 only.
    return (unshare, "-m", "--propagation", "private", "sh", "-c",
            f'{umounts}; exec "$0" "$@"', path)


def shlex_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def _measure(info: RuntimeInfo, runs: int) -> RuntimeInfo:
    """Run a no-op container `runs` times with our own config; the median start time."""
    with tempfile.TemporaryDirectory(prefix="dockyard-probe-") as tmp:
        bundle = Path(tmp) / "bundle"
        rootfs = bundle / "rootfs"
        state_root = Path(tmp) / "state"
        rootfs.mkdir(parents=True)
        state_root.mkdir()
        true_bin = shutil.which("true") or "/bin/true"
        mounts = _host_usr_mounts(rootfs)
        tag = f"{os.getpid()}-{info.name}"
        spec = ContainerSpec(args=(true_bin,), rootfs=str(rootfs), readonly_rootfs=True,
                             cgroups_path=f"{_PROBE_CGROUP_PARENT}/{tag}", mounts=mounts,
                             network="none")
        (bundle / "config.json").write_bytes(msgspec.json.encode(build_config(spec)))
        times = []
        try:
            for i in range(runs):
                cmd = info.command(state_root, "run", "--bundle", str(bundle), f"dockyard-probe-{tag}-{i}")
                t0 = time.perf_counter()
                try:
                    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                       timeout=_PROBE_TIMEOUT)
                except (OSError, subprocess.SubprocessError) as e:
                    raise Unavailable(f"probe container did not run: {e}") from e
                times.append((time.perf_counter() - t0) * 1000)
                if p.returncode != 0:
                    err = (p.stderr or p.stdout).decode(errors="replace").strip()
                    raise Unavailable(f"probe container failed ({p.returncode}): {err[-500:]}")
        finally:
            cgroups.remove_cgroup(spec.cgroups_path, remove_empty_parents_up_to=1)
    return RuntimeInfo(info.name, info.argv, info.version, statistics.median(times))


def _host_usr_mounts(rootfs: Path) -> tuple[BindMount, ...]:
    """Lend the host's binaries to the probe rootfs, read-only (merged-/usr or not)."""
    mounts = []
    for top in ("usr", "bin", "lib", "lib64", "sbin"):
        host = Path("/") / top
        if host.is_symlink():
            (rootfs / top).symlink_to(os.readlink(host))
        elif host.is_dir():
            (rootfs / top).mkdir()
            mounts.append(BindMount(str(host), f"/{top}", readonly=True))
    return tuple(mounts)
