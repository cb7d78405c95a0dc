"""What a container is (`ContainerSpec`) and its OCI runtime-spec config.json.

The defaults follow docker's: its capability set, masked and read-only /proc
and /sys paths, standard mounts, device cgroup rules, a seccomp profile
(see seccomp.py) and no-new-privileges. Limits follow docker's flags:
`memory_bytes` is `--memory`, `memory_swap_bytes` is `--memory-swap` (memory +
swap; -1 unlimited; unset means twice the memory), `cpu_shares` is `--cpu-shares`.
"""

from __future__ import annotations

import posixpath
import resource

import msgspec

from shared.errors import InvalidArgument
from shared.runtime import seccomp, spec_flags

OCI_VERSION = "1.0.2"

# docker's default capabilities (moby oci/caps/defaults.go).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

KNOWN_CAPABILITIES = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
})

MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# docker's default device cgroup: deny all, then allow the standard nodes.
_DEVICE_RULES = (
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},    # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},    # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},    # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},    # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},    # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},    # tty
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},    # console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},    # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},              # pts/*
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},  # net/tun
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
)

# What podman asks for; capped at the host's own hard limits because this host
# withholds CAP_SYS_RESOURCE and a runtime then fails to raise them.
_WANTED_RLIMITS = {
    "RLIMIT_NOFILE": (resource.RLIMIT_NOFILE, 1048576),
    "RLIMIT_NPROC": (resource.RLIMIT_NPROC, 4194304),
}

MIN_MEMORY_BYTES = 6 * 1024 * 1024  # docker's minimum for --memory


class BindMount(msgspec.Struct, frozen=True):
    source: str
    destination: str
    readonly: bool = False


class ContainerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A container to run. `network`: "host", "none" (a new empty netns) or a netns path."""

    args: tuple[str, ...]
    rootfs: str
    cgroups_path: str
    env: tuple[str, ...] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    hostname: str = ""
    readonly_rootfs: bool = False
    mounts: tuple[BindMount, ...] = ()
    network: str = "host"
    memory_bytes: int | None = None
    memory_swap_bytes: int | None = None
    cpu_shares: int | None = None
    extra_capabilities: tuple[str, ...] = ()
    terminal: bool = False
    # runflags: --cpus, --pids-limit, --ulimit, --tmpfs, --init, caps, seccomp, --privileged
    flags: spec_flags.SpecFlags = spec_flags.SpecFlags()

    def __post_init__(self) -> None:
        if not self.args:
            raise InvalidArgument("container has no command")
        for path, what in ((self.rootfs, "rootfs"), (self.cwd, "working directory"),
                           (self.cgroups_path, "cgroups path")):
            if not posixpath.isabs(path):
                raise InvalidArgument(f"{what} must be an absolute path: {path!r}")
        if ".." in self.cgroups_path.split("/"):
            raise InvalidArgument(f"cgroups path may not contain '..': {self.cgroups_path!r}")
        if self.network not in ("host", "none") and not posixpath.isabs(self.network):
            raise InvalidArgument(f"network must be 'host', 'none' or a netns path: {self.network!r}")
        for m in self.mounts:
            if not posixpath.isabs(m.destination) or not posixpath.isabs(m.source):
                raise InvalidArgument(f"bind mount paths must be absolute: {m.source}:{m.destination}")
        for e in self.env:
            if "=" not in e:
                raise InvalidArgument(f"environment entry is not NAME=VALUE: {e!r}")
        self._check_limits()
        for cap in self.extra_capabilities:
            if normalize_capability(cap) not in KNOWN_CAPABILITIES:
                raise InvalidArgument(f"unknown capability {cap!r}")

    def _check_limits(self) -> None:
        mem, swap = self.memory_bytes, self.memory_swap_bytes
        if mem is not None and mem < MIN_MEMORY_BYTES:
            raise InvalidArgument("minimum memory limit allowed is 6MB")
        if swap is not None and swap not in (-1, 0):
            if mem is None:
                raise InvalidArgument("you should always set the memory limit when using memory-swap")
            if swap < mem:
                raise InvalidArgument("minimum memory-swap limit should be larger than memory limit")
        if self.cpu_shares is not None and self.cpu_shares < 0:
            raise InvalidArgument("cpu-shares must not be negative")

    @property
    def capabilities(self) -> tuple[str, ...]:
        extra = [normalize_capability(c) for c in self.extra_capabilities]
        return tuple(dict.fromkeys([*DEFAULT_CAPABILITIES, *extra]))

    @property
    def swap_limit(self) -> int | None:
        """memory+swap as the OCI spec wants it, with docker's default of 2x memory."""
        if self.memory_bytes is None:
            return None
        if self.memory_swap_bytes in (None, 0):
            return 2 * self.memory_bytes
        return self.memory_swap_bytes


def normalize_capability(name: str) -> str:
    name = name.upper()
    return name if name.startswith("CAP_") else f"CAP_{name}"


def build_config(spec: ContainerSpec) -> dict:
    """The OCI runtime-spec config.json for `spec`."""
    caps = list(spec.capabilities)
    config = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": spec.terminal,  # interactive: a pty whose master crun sends to the console socket
            "user": {"uid": spec.uid, "gid": spec.gid,
                     **({"additionalGids": list(spec.additional_gids)} if spec.additional_gids else {})},
            "args": list(spec.args),
            "env": _env(spec),
            "cwd": spec.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": host_capped_rlimits(),
            "noNewPrivileges": True,
        },
        "root": {"path": spec.rootfs, "readonly": spec.readonly_rootfs},
        "hostname": spec.hostname,
        "mounts": _mounts(spec),
        "linux": {
            "cgroupsPath": spec.cgroups_path,
            "resources": _resources(spec),
            "namespaces": _namespaces(spec),
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "seccomp": seccomp.default_profile(frozenset(caps)),
        },
    }
    return spec_flags.apply(spec.flags, config, default_caps=spec.capabilities, known_caps=KNOWN_CAPABILITIES,
                            seccomp_for=seccomp.default_profile)


def host_capped_rlimits() -> list[dict]:
    out = []
    for name, (res, wanted) in _WANTED_RLIMITS.items():
        _soft, hard = resource.getrlimit(res)
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        out.append({"type": name, "soft": value, "hard": value})
    return out


def _env(spec: ContainerSpec) -> list[str]:
    env = list(spec.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def _mounts(spec: ContainerSpec) -> list[dict]:
    # A fresh sysfs needs a network namespace of its own; with the host's
    # network docker bind-mounts the host's /sys read-only instead.
    if spec.network == "host":
        sys_mount = {"destination": "/sys", "type": "bind", "source": "/sys",
                     "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
    else:
        sys_mount = {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                     "options": ["nosuid", "noexec", "nodev", "ro"]}
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        sys_mount,
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]
    for m in spec.mounts:
        opts = ["rbind", "rprivate"] + (["ro"] if m.readonly else [])
        mounts.append({"destination": m.destination, "type": "bind", "source": m.source,
                       "options": opts})
    return mounts


def _resources(spec: ContainerSpec) -> dict:
    res: dict = {"devices": [dict(r) for r in _DEVICE_RULES]}
    if spec.memory_bytes is not None:
        res["memory"] = {"limit": spec.memory_bytes, "swap": spec.swap_limit}
    if spec.cpu_shares:
        res["cpu"] = {"shares": spec.cpu_shares}
    return res


def _namespaces(spec: ContainerSpec) -> list[dict]:
    ns: list[dict] = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    if spec.network == "none":
        ns.append({"type": "network"})
    elif spec.network != "host":
        ns.append({"type": "network", "path": spec.network})
    return ns
