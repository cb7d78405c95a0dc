"""config.json under the issue-11 flags (shared/runtime/spec_flags.py)."""

from __future__ import annotations

import json

from shared.runtime.spec import DEFAULT_CAPABILITIES, ContainerSpec, build_config
from shared.runtime.spec_flags import INIT_PATH, RLIM_INFINITY, SpecFlags, capabilities, oci_seccomp


def _config(**flags) -> dict:
    return build_config(ContainerSpec(args=("sh",), rootfs="/r", cgroups_path="/dy/c", network="none",
                                      flags=SpecFlags(**flags)))


def test_limits_mounts_and_init():
    cfg = _config(cpus=1.5, pids_limit=100, ulimits=(("nofile", 10, 20), ("core", -1, -1)),
                  tmpfs=(("/run", ("size=1m",)),), init_path="/usr/bin/tini-static")
    res = cfg["linux"]["resources"]
    assert res["cpu"] == {"quota": 150000, "period": 100000} and res["pids"] == {"limit": 100}
    rl = {r["type"]: (r["soft"], r["hard"]) for r in cfg["process"]["rlimits"]}
    assert rl["RLIMIT_NOFILE"] == (10, 20) and rl["RLIMIT_CORE"] == (RLIM_INFINITY, RLIM_INFINITY)
    tmpfs = next(m for m in cfg["mounts"] if m["destination"] == "/run")
    assert tmpfs["type"] == "tmpfs" and tmpfs["options"] == ["rw", "noexec", "nosuid", "nodev", "size=1m"]
    assert cfg["process"]["args"] == [INIT_PATH, "--", "sh"]
    assert any(m["destination"] == INIT_PATH and m["source"] == "/usr/bin/tini-static" for m in cfg["mounts"])


def test_default_flags_leave_the_default_config():
    plain = build_config(ContainerSpec(args=("sh",), rootfs="/r", cgroups_path="/dy/c", network="none"))
    assert plain == _config()


def test_capabilities_follow_dockers_rules():
    known = frozenset({"CAP_A", "CAP_B", "CAP_C"})
    assert capabilities(("CAP_A", "CAP_B"), known, ("CAP_C",), ("CAP_A",)) == ["CAP_B", "CAP_C"]
    assert capabilities(("CAP_A", "CAP_B"), known, ("CAP_C",), ("ALL",)) == ["CAP_C"]
    assert sorted(capabilities(("CAP_A",), known, ("ALL",), ())) == ["CAP_A", "CAP_B", "CAP_C"]
    cfg = _config(cap_drop=("CAP_CHOWN",), cap_add=("CAP_NET_ADMIN",))
    caps = cfg["process"]["capabilities"]["effective"]
    assert "CAP_CHOWN" not in caps and "CAP_NET_ADMIN" in caps and len(caps) == len(DEFAULT_CAPABILITIES)


def test_privileged_and_seccomp():
    cfg = _config(privileged=True)
    assert "seccomp" not in cfg["linux"] and cfg["linux"]["maskedPaths"] == []
    assert cfg["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "CAP_SYS_ADMIN" in cfg["process"]["capabilities"]["bounding"]
    assert "seccomp" not in _config(seccomp_profile="unconfined")["linux"]
    docker_profile = {"defaultAction": "SCMP_ACT_ERRNO", "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}], "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}
    out = oci_seccomp(json.dumps(docker_profile), frozenset({"CAP_CHOWN"}))
    assert out == {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                   "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}
