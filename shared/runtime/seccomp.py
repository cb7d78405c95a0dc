"""The default seccomp profile: docker's denylist, as an OCI `linux.seccomp` object.

Docker's default profile is an allowlist of ~350 syscalls whose exact content
drifts with every libseccomp and kernel release; an allowlist that is one name
short breaks ordinary programs, and crun and runc treat unknown names
differently. What the allowlist actually *withholds* is short and stable, so we
state that instead: allow by default, refuse (EPERM) the syscalls docker's
profile does not grant, and lift each group only when the container is given the
capability that docker's profile ties it to. `clone` with namespace flags is
refused like docker does; `clone3` answers ENOSYS (as docker's does) so that
libc falls back to `clone`, whose flags seccomp can inspect.
"""

from __future__ import annotations

import platform

EPERM = 1
ENOSYS = 38

# Syscalls refused regardless of capabilities (docker's profile never allows them).
_ALWAYS_DENIED = (
    "add_key", "keyctl", "request_key",
    "create_module", "get_kernel_syms", "query_module", "nfsservctl",
    "uselib", "ustat", "sysfs", "_sysctl", "vm86", "vm86old",
    "userfaultfd",
)

# Syscalls docker's profile grants only together with a capability.
_DENIED_UNLESS_CAP: dict[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": (
        "mount", "umount", "umount2", "unshare", "setns", "pivot_root",
        "quotactl", "name_to_handle_at", "lookup_dcookie", "perf_event_open",
        "bpf", "fanotify_init", "syslog",
        "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
    ),
    "CAP_SYS_BOOT": ("reboot", "kexec_load", "kexec_file_load"),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_PTRACE": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_NICE": ("get_mempolicy", "set_mempolicy", "mbind", "move_pages"),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

# clone(2) flags that create namespaces (docker masks 0x7E020000 = all of them).
_CLONE_NS_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)

_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "ppc64le": ["SCMP_ARCH_PPC64LE"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
}

# Syscalls that exist on x86 only; elsewhere libseccomp cannot resolve the names.
_X86_ONLY = frozenset({"vm86", "vm86old", "iopl", "ioperm"})


def default_profile(capabilities: frozenset[str] | set[str]) -> dict:
    """Docker's default restrictions for a container holding `capabilities`."""
    machine = platform.machine()
    denied: set[str] = set(_ALWAYS_DENIED)
    for cap, names in _DENIED_UNLESS_CAP.items():
        if cap not in capabilities:
            denied.update(names)
    # A granted capability lifts a syscall even if another group lists it too
    # (syslog: CAP_SYS_ADMIN or CAP_SYSLOG; bpf: CAP_SYS_ADMIN or CAP_BPF).
    for cap in capabilities:
        denied.difference_update(_DENIED_UNLESS_CAP.get(cap, ()))
    if machine not in ("x86_64", "i686"):
        denied -= _X86_ONLY
    rules: list[dict] = [
        {"names": sorted(denied), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    if "CAP_SYS_ADMIN" not in capabilities and machine != "s390x":
        # One rule per flag: MASKED_EQ can only say "this bit is set".
        for flag in _CLONE_NS_FLAGS:
            rules.append({
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            })
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": _ARCHES.get(machine, []),
        "syscalls": rules,
    }
