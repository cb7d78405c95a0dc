"""The parts of config.json that `run`'s issue-11 flags change, applied over spec.py's defaults.

--cpus (CFS quota over a 100 ms period), --pids-limit, --ulimit, --tmpfs, --init (a
tini bind-mounted at /sbin/docker-init as pid 1), --cap-add/--cap-drop, --security-opt
seccomp=..., and --privileged with docker's meaning: every capability, no seccomp, no
masked or read-only paths, every device node allowed, /sys writable.
"""

from __future__ import annotations

import json

import msgspec

from shared.errors import InvalidArgument

CPU_PERIOD = 100_000  # docker's --cpus period (microseconds)
INIT_PATH = "/sbin/docker-init"  # where docker puts its init too
TMPFS_DEFAULTS = ("rw", "noexec", "nosuid", "nodev")  # docker's --tmpfs defaults
RLIM_INFINITY = 2 ** 64 - 1  # the OCI spec's unlimited

# docker's --ulimit names: every RLIMIT_* of setrlimit(2).
ULIMIT_NAMES = {
    "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE",
    "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS",
    "rtprio": "RLIMIT_RTPRIO", "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING",
    "stack": "RLIMIT_STACK", "as": "RLIMIT_AS",
}


# Capability numbers (linux/capability.h), to read a bounding set.
CAP_BY_NUMBER = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)


def own_bounding_set() -> frozenset[str]:
    """The capabilities this process may hand on: "all" means these (a host may withhold some)."""
    try:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith("CapBnd:"))
    except (OSError, StopIteration):
        return frozenset(CAP_BY_NUMBER)
    bits = int(line.split()[1], 16)
    return frozenset(name for n, name in enumerate(CAP_BY_NUMBER) if bits >> n & 1)


class SpecFlags(msgspec.Struct, frozen=True, kw_only=True):
    cpus: float = 0.0
    pids_limit: int = 0  # 0 unset, -1 unlimited
    ulimits: tuple[tuple[str, int, int], ...] = ()  # (docker name, soft, hard), -1 unlimited
    tmpfs: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (path, options)
    init_path: str = ""  # the host's tini-static: run it as pid 1
    cap_add: tuple[str, ...] = ()  # CAP_ names or ALL
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    seccomp_profile: str = ""  # JSON text, "unconfined", or "" for the default


def capabilities(default: tuple[str, ...], known: frozenset[str], add: tuple[str, ...],
                 drop: tuple[str, ...]) -> list[str]:
    """docker's rule: drop ALL starts from nothing, add ALL gives all, else default - drop + add."""
    caps = [] if "ALL" in drop else [c for c in default if c not in drop]
    extra = sorted(known) if "ALL" in add else list(add)
    return list(dict.fromkeys([*caps, *(c for c in extra if c not in drop or "ALL" in add)]))


def apply(flags: SpecFlags, config: dict, *, default_caps: tuple[str, ...], known_caps: frozenset[str],
          seccomp_for) -> dict:
    """`config` (spec.build_config's) with `flags` in force; `seccomp_for(caps)` the default profile."""
    proc, linux = config["process"], config["linux"]
    res = linux["resources"]
    if flags.cpus:
        res["cpu"] = {**res.get("cpu", {}), "quota": int(flags.cpus * CPU_PERIOD), "period": CPU_PERIOD}
    if flags.pids_limit:
        res["pids"] = {"limit": flags.pids_limit}
    if flags.ulimits:
        proc["rlimits"] = _rlimits(proc["rlimits"], flags.ulimits)
    for path, opts in flags.tmpfs:
        config["mounts"].append({"destination": path, "type": "tmpfs", "source": "tmpfs",
                                 "options": list(dict.fromkeys([*TMPFS_DEFAULTS, *opts]))})
    if flags.init_path:
        config["mounts"].append({"destination": INIT_PATH, "type": "bind", "source": flags.init_path,
                                 "options": ["rbind", "rprivate", "ro"]})
        proc["args"] = [INIT_PATH, "--", *proc["args"]]
    if flags.cap_add or flags.cap_drop or flags.privileged or flags.seccomp_profile:
        if flags.privileged or "ALL" in flags.cap_add:
            known_caps = known_caps & own_bounding_set()
        caps = sorted(known_caps) if flags.privileged else capabilities(default_caps, known_caps, flags.cap_add,
                                                                         flags.cap_drop)
        proc["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
        linux["seccomp"] = _seccomp(flags, frozenset(caps), seccomp_for)
        if linux["seccomp"] is None:
            del linux["seccomp"]
    if flags.privileged:
        _privileged(config)
    return config


def _rlimits(base: list[dict], ulimits: tuple[tuple[str, int, int], ...]) -> list[dict]:
    out = {r["type"]: r for r in base}
    for name, soft, hard in ulimits:
        kind = ULIMIT_NAMES.get(name)
        if kind is None:
            raise InvalidArgument(f"invalid ulimit type: {name}")
        out[kind] = {"type": kind, "soft": RLIM_INFINITY if soft < 0 else soft,
                     "hard": RLIM_INFINITY if hard < 0 else hard}
    return list(out.values())


def _seccomp(flags: SpecFlags, caps: frozenset[str], seccomp_for) -> dict | None:
    if flags.privileged or flags.seccomp_profile == "unconfined":
        return None
    if not flags.seccomp_profile:
        return seccomp_for(caps)
    return oci_seccomp(flags.seccomp_profile, caps)


def oci_seccomp(text: str, caps: frozenset[str]) -> dict:
    """A seccomp profile file (docker's format or the OCI one) as `linux.seccomp`."""
    try:
        prof = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"seccomp profile is not JSON: {e}") from None
    if not isinstance(prof, dict) or not isinstance(prof.get("defaultAction"), str):
        raise InvalidArgument("seccomp profile has no defaultAction")
    out: dict = {"defaultAction": prof["defaultAction"]}
    if "defaultErrnoRet" in prof:
        out["defaultErrnoRet"] = prof["defaultErrnoRet"]
    arches = list(prof.get("architectures") or [])
    for m in prof.get("archMap") or []:  # docker's format
        arches += [m.get("architecture"), *(m.get("subArchitectures") or [])]
    if arches:
        out["architectures"] = [a for a in dict.fromkeys(arches) if a]
    syscalls = []
    for rule in prof.get("syscalls") or []:
        if not isinstance(rule, dict) or not _applies(rule, caps):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names or not isinstance(rule.get("action"), str):
            raise InvalidArgument(f"seccomp profile: a syscall rule needs names and an action: {rule}")
        entry = {"names": names, "action": rule["action"]}
        for key in ("args", "errnoRet"):
            if rule.get(key) is not None:
                entry[key] = rule[key]
        syscalls.append(entry)
    out["syscalls"] = syscalls
    return out


def _applies(rule: dict, caps: frozenset[str]) -> bool:
    """docker's `includes`/`excludes` by capability (other conditions are not evaluated)."""
    inc = set((rule.get("includes") or {}).get("caps") or [])
    exc = set((rule.get("excludes") or {}).get("caps") or [])
    return inc <= caps and not exc & caps


def _privileged(config: dict) -> None:
    linux = config["linux"]
    linux["maskedPaths"], linux["readonlyPaths"] = [], []
    linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    config["process"]["noNewPrivileges"] = False
    for m in config["mounts"]:
        if m["destination"] in ("/sys", "/sys/fs/cgroup"):
            m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]

