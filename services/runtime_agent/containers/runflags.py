"""The agent's side of `run`'s issue-11 flags: checked at the bus edge, resolved against the image.

- What gives the host away (--privileged, a seccomp profile other than the default, a
  capability that escapes a container) is refused on `run` with NEEDS_PRIVILEGE: only the admin-only subject
  `run-privileged` accepts it (the server enforces who may publish there).
- STOPSIGNAL and HEALTHCHECK of the image apply unless a flag says otherwise; -P publishes
  every EXPOSEd port on a free host port.
- --add-host and --dns rewrite the per-container /etc/hosts and /etc/resolv.conf.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import shutil

import msgspec

from services.runtime_agent.containers.signals import parse_signal
from shared.errors import InvalidArgument, PermissionDenied, Unavailable
from shared.messages.agent import NEEDS_PRIVILEGE
from shared.messages.runflags import Health, RunFlags
from shared.oci.manifest import ContainerConfig as ImageRunConfig
from shared.runtime.records import write_atomic
from shared.runtime.spec import KNOWN_CAPABILITIES, normalize_capability
from shared.runtime.spec_flags import ULIMIT_NAMES, SpecFlags

# Capabilities with which a process can leave its container (or own the host): admin only.
HOST_CAPABILITIES = frozenset({
    "ALL", "CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH",
    "CAP_SYS_BOOT", "CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE", "CAP_BPF", "CAP_PERFMON", "CAP_SYS_TIME",
    "CAP_SYSLOG", "CAP_LINUX_IMMUTABLE", "CAP_CHECKPOINT_RESTORE",
})
TINI_CANDIDATES = ("tini-static", "/usr/bin/tini-static", "/usr/local/bin/tini-static")
_NS = 1e-9  # image config durations are nanoseconds


def caps(names: list[str]) -> list[str]:
    out = []
    for n in names:
        c = "ALL" if n.upper() == "ALL" else normalize_capability(n)
        if c != "ALL" and c not in KNOWN_CAPABILITIES:
            raise InvalidArgument(f"unknown capability {n!r}")
        out.append(c)
    return out


def privilege_needed(flags: RunFlags) -> str:
    """Why `flags` need the admin subject, or "" if they do not."""
    if flags.privileged:
        return "--privileged"
    if flags.seccomp_profile == "unconfined":
        return "--security-opt seccomp=unconfined"
    if flags.seccomp_profile:  # any profile of one's own can allow what the default refuses
        return "--security-opt seccomp=FILE"
    escaping = sorted(set(caps(flags.cap_add)) & HOST_CAPABILITIES)
    return f"--cap-add {','.join(escaping)}" if escaping else ""


def check_privilege(flags: RunFlags, *, allowed: bool) -> None:
    why = privilege_needed(flags)
    if why and not allowed:
        raise PermissionDenied(f"{why} gives the container the host: only an admin may run it",
                               detail_code=NEEDS_PRIVILEGE)


def resolve(flags: RunFlags, image: ImageRunConfig) -> RunFlags:
    """`flags` checked, with the image's STOPSIGNAL and HEALTHCHECK where no flag overrides them."""
    if flags.cpus < 0 or flags.cpus > (os.cpu_count() or 1):
        raise InvalidArgument(f"range of CPUs is from 0.01 to {os.cpu_count() or 1}.00, as there are only "
                              f"{os.cpu_count() or 1} CPUs available")
    if flags.pids_limit < -1:
        raise InvalidArgument(f"invalid --pids-limit {flags.pids_limit}")
    for u in flags.ulimits:
        if u.name not in ULIMIT_NAMES:
            raise InvalidArgument(f"invalid ulimit type: {u.name}")
        if u.hard >= 0 and (u.soft < 0 or u.soft > u.hard):
            raise InvalidArgument(f"ulimit soft limit must be less than or equal to hard limit: {u.name}")
    for t in flags.tmpfs:
        if not posixpath.isabs(t.path) or posixpath.normpath(t.path) == "/":
            raise InvalidArgument(f"invalid --tmpfs {t.path!r}: an absolute path other than /")
    for h in flags.add_hosts:
        _ip(h.ip, "--add-host")
        if not h.name or any(ch.isspace() or ch == "#" for ch in h.name):
            raise InvalidArgument(f"invalid --add-host name {h.name!r}")
    for d in flags.dns:
        _ip(d, "--dns")
    stop_signal = flags.stop_signal or image.stop_signal or "SIGTERM"
    parse_signal(stop_signal)
    if flags.stop_timeout is not None and flags.stop_timeout < -1:
        raise InvalidArgument(f"invalid --stop-timeout {flags.stop_timeout}")
    return msgspec.structs.replace(flags, cap_add=caps(flags.cap_add), cap_drop=caps(flags.cap_drop),
                                   stop_signal=stop_signal, health=_health(flags.health, image))


def _health(flag: Health | None, image: ImageRunConfig) -> Health | None:
    """The check in force: the flags' fields over the image's; None when there is none."""
    hc = image.healthcheck
    base = Health(test=list(hc.test or []), interval=(hc.interval or 0) * _NS, timeout=(hc.timeout or 0) * _NS,
                  start_period=(hc.start_period or 0) * _NS, retries=hc.retries or 0) if hc else Health()
    if flag is not None:
        base = Health(test=flag.test or base.test, interval=flag.interval or base.interval,
                      timeout=flag.timeout or base.timeout, start_period=flag.start_period or base.start_period,
                      retries=flag.retries or base.retries)
    if not base.test or base.test[0] == "NONE":
        return None
    if base.test[0] not in ("CMD", "CMD-SHELL") or len(base.test) < 2:
        raise InvalidArgument(f"invalid health check test {base.test!r}: CMD ARGS..., CMD-SHELL COMMAND or NONE")
    return base


def _ip(text: str, flag: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid IP address in {flag}: {text!r}") from None


def exposed_publish(image: ImageRunConfig) -> list[str]:
    """-P: each EXPOSEd port (`8080/tcp`) to a free host port on every address."""
    out = []
    for key in sorted(image.exposed_ports or {}):
        port, _, proto = key.partition("/")
        out.append(f"0:{port}/{proto or 'tcp'}")
    return out


def init_binary() -> str:
    for name in TINI_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise Unavailable("--init needs tini-static on the agent's host (the Debian package tini)")


def spec_flags(flags: RunFlags) -> SpecFlags:
    return SpecFlags(cpus=flags.cpus, pids_limit=flags.pids_limit,
                     ulimits=tuple((u.name, u.soft, u.hard) for u in flags.ulimits),
                     tmpfs=tuple((t.path, tuple(t.options)) for t in flags.tmpfs),
                     init_path=init_binary() if flags.init else "", cap_add=tuple(flags.cap_add),
                     cap_drop=tuple(flags.cap_drop), privileged=flags.privileged,
                     seccomp_profile=flags.seccomp_profile)


def write_etc(etc, flags: RunFlags) -> None:
    """--add-host lines into the container's hosts file, --dns servers into its resolv.conf."""
    if flags.add_hosts:
        extra = "".join(f"{h.ip}\t{h.name}\n" for h in flags.add_hosts)
        write_atomic(etc.hosts, etc.hosts.read_bytes() + extra.encode())
    if flags.dns:
        kept = [ln for ln in etc.resolv_conf.read_text().splitlines(keepends=True)
                if not ln.startswith("nameserver")]
        write_atomic(etc.resolv_conf, ("".join(f"nameserver {d}\n" for d in flags.dns) + "".join(kept)).encode())
    for p in (etc.hosts, etc.resolv_conf):
        p.chmod(0o644)


def stop_with(flags: RunFlags, timeout: float | None) -> tuple[float, int]:
    """(grace seconds, signal) of a stop: `stop -t` over --stop-timeout over docker's 10 s."""
    if timeout is None:
        timeout = flags.stop_timeout if flags.stop_timeout is not None else 10.0
    if timeout < 0:
        timeout = 24 * 3600.0  # docker's -1: wait for the process however long it takes
    return timeout, parse_signal(flags.stop_signal or "SIGTERM")
