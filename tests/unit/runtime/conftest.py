"""A real OCI runtime and a busybox rootfs; every host resource is named dyrt-*."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from shared.runtime import ContainerSpec, Runtime, cgroups
from shared.runtime.probe import RuntimeInfo, probe_runtime

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
CGROUP_PARENT = f"/dyrt-{os.getpid()}"



def _needs_root() -> None:
    if os.geteuid() != 0 or not os.path.exists(BUSYBOX):
        pytest.skip("needs root, an OCI runtime and busybox-static")


@pytest.fixture(scope="session")
def runtime_info() -> RuntimeInfo:
    _needs_root()
    return probe_runtime()


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory) -> Path:
    """A read-only-shareable rootfs: static busybox, its applets, /etc/passwd."""
    _needs_root()
    root = tmp_path_factory.mktemp("dyrt-rootfs")
    root.chmod(0o755)  # it becomes the container's /: non-root users must traverse it
    (root / "bin").mkdir()
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for name in applets:
        if name != "busybox" and "/" not in name:
            (root / "bin" / name).symlink_to("busybox")
    for d in ("etc", "proc", "sys", "dev", "tmp"):
        (root / d).mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\n")
    yield root
    # Every test removes its own container cgroup; the shared parent goes last.
    cgroups.remove_cgroup(CGROUP_PARENT)


@pytest.fixture(scope="session")
def forced_infos() -> dict[str, RuntimeInfo]:
    return {}


@pytest.fixture
def runtime(runtime_info, tmp_path) -> Runtime:
    rt = Runtime(runtime_info, tmp_path / "state")
    yield rt
    force_cleanup(rt)


@pytest.fixture(params=["crun", "runc"])
def each_runtime(request, forced_infos, tmp_path) -> Runtime:
    """Both runtimes in turn (each forced through DOCKYARD_RUNTIME, still probed)."""
    _needs_root()
    name = request.param
    if name not in forced_infos:
        if shutil.which(name) is None:
            pytest.skip(f"{name} not installed")
        forced_infos[name] = probe_runtime({"DOCKYARD_RUNTIME": name})
    rt = Runtime(forced_infos[name], tmp_path / "state")
    yield rt
    force_cleanup(rt)


@pytest.fixture
def make_spec(busybox_rootfs):
    def make(cid: str, *args: str, **kw) -> ContainerSpec:
        kw.setdefault("network", "none")
        return ContainerSpec(args=args, rootfs=str(busybox_rootfs), readonly_rootfs=True,
                             cgroups_path=f"{CGROUP_PARENT}/{cid}", **kw)
    return make


@pytest.fixture
def bundle(tmp_path) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    return d


@pytest.fixture
def new_id():
    return lambda: f"dyrt-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cleanup():
    return force_cleanup


def force_cleanup(rt: Runtime) -> None:
    """Whatever a failed test left: kill and delete through the runtime, rmdir cgroups."""
    rt.close()  # the spare shim, the exit listeners
    if not rt.containers_dir.exists():
        return
    for d in rt.containers_dir.iterdir():
        subprocess.run(rt.command("delete", "--force", d.name), capture_output=True)
        cgroups.remove_cgroup(f"{CGROUP_PARENT}/{d.name}")
    for d in rt.runtime_root.iterdir():
        subprocess.run(rt.command("delete", "--force", d.name), capture_output=True)
