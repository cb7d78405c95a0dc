"""ContainerSpec validation and the config.json it becomes (plus namespaces and users for real)."""

from __future__ import annotations

import resource
import subprocess

import msgspec
import pytest

from shared.errors import InvalidArgument
from shared.runtime import jsonlog
from shared.runtime.spec import DEFAULT_CAPABILITIES, BindMount, ContainerSpec, build_config


def spec(**kw) -> ContainerSpec:
    base = dict(args=("true",), rootfs="/tmp/rootfs", cgroups_path="/dyrt-spec/x")
    base.update(kw)
    return ContainerSpec(**base)


def test_config_has_docker_defaults():
    cfg = build_config(spec(env=("A=1",), uid=1000, gid=1000, additional_gids=(10,), hostname="h"))
    proc = cfg["process"]
    assert proc["noNewPrivileges"] is True and proc["terminal"] is False
    assert proc["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10]}
    assert proc["env"][0].startswith("PATH=") and proc["env"][1] == "A=1"
    assert proc["capabilities"]["bounding"] == list(DEFAULT_CAPABILITIES)
    assert cfg["hostname"] == "h" and cfg["linux"]["cgroupsPath"] == "/dyrt-spec/x"
    linux = cfg["linux"]
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    assert {m["destination"] for m in cfg["mounts"]} >= {
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"}
    assert linux["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    denied = {n for r in linux["seccomp"]["syscalls"] if r["action"] == "SCMP_ACT_ERRNO" and "args" not in r
              for n in r["names"]}
    assert {"keyctl", "add_key", "mount", "umount2", "ptrace", "reboot", "kexec_load", "bpf",
            "perf_event_open", "unshare", "setns", "open_by_handle_at", "init_module"} <= denied
    msgspec.json.encode(cfg)  # serialisable as is


def test_rlimits_never_exceed_the_hosts_hard_limits():
    for rl in build_config(spec())["process"]["rlimits"]:
        res = getattr(resource, rl["type"])
        hard = resource.getrlimit(res)[1]
        assert rl["soft"] <= rl["hard"]
        assert hard == resource.RLIM_INFINITY or rl["hard"] <= hard


def test_extra_capability_lifts_its_syscalls():
    cfg = build_config(spec(extra_capabilities=("sys_admin",)))
    assert "CAP_SYS_ADMIN" in cfg["process"]["capabilities"]["effective"]
    denied = {n for r in cfg["linux"]["seccomp"]["syscalls"] for n in r["names"]}
    assert "mount" not in denied and "unshare" not in denied and "clone" not in denied
    assert "keyctl" in denied


@pytest.mark.parametrize("memory,swap,expect", [
    (64 << 20, None, 128 << 20),   # docker: unset swap allows as much swap as memory
    (64 << 20, -1, -1),            # unlimited
    (64 << 20, 64 << 20, 64 << 20),  # no swap at all
])
def test_memory_swap_follows_docker(memory, swap, expect):
    mem = build_config(spec(memory_bytes=memory, memory_swap_bytes=swap))["linux"]["resources"]["memory"]
    assert mem == {"limit": memory, "swap": expect}


@pytest.mark.parametrize("kw", [
    dict(memory_bytes=1 << 20),
    dict(memory_bytes=64 << 20, memory_swap_bytes=32 << 20),
    dict(memory_swap_bytes=64 << 20),
    dict(cgroups_path="relative/path"),
    dict(cgroups_path="/a/../b"),
    dict(network="bridge"),
    dict(args=()),
    dict(env=("NOEQUALS",)),
    dict(extra_capabilities=("CAP_NOPE",)),
    dict(mounts=(BindMount("rel", "/x"),)),
])
def test_invalid_specs_are_refused(kw):
    with pytest.raises(InvalidArgument):
        spec(**kw)


def test_spec_decodes_from_the_wire():
    wire = msgspec.json.encode(spec(memory_bytes=64 << 20, mounts=(BindMount("/a", "/b", True),)))
    back = msgspec.json.decode(wire, type=ContainerSpec)
    assert back.mounts[0].readonly and back.memory_bytes == 64 << 20
    with pytest.raises(InvalidArgument):
        msgspec.json.decode(wire.replace(b'"network":"host"', b'"network":"x"'), type=ContainerSpec)


def test_network_modes_map_to_namespaces():
    def net(s):
        return [n for n in build_config(s)["linux"]["namespaces"] if n["type"] == "network"]
    assert net(spec()) == []
    assert net(spec(network="none")) == [{"type": "network"}]
    assert net(spec(network="/run/netns/x")) == [{"type": "network", "path": "/run/netns/x"}]


@pytest.mark.root
async def test_user_netns_path_and_bind_mount_for_real(runtime, make_spec, bundle, tmp_path, new_id):
    netns = f"dyrt-{new_id()[5:]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        vol = tmp_path / "vol"
        vol.mkdir()
        (vol / "f").write_text("from host\n")
        cid = new_id()
        s = make_spec(cid, "sh", "-c", "id; ls /sys/class/net; cat /data/f; touch /data/g; echo touch=$?",
                      uid=65534, gid=65534, additional_gids=(10,), network=f"/run/netns/{netns}",
                      mounts=(BindMount(str(vol), "/data", readonly=True),))
        await runtime.create_and_start(cid, bundle, s, tmp_path / "l")
        assert await runtime.wait(cid, 10) == 0
        out = "".join(e.log for e in jsonlog.read_entries(tmp_path / "l") if e.stream == "stdout")
        assert out.startswith("uid=65534(nobody) gid=65534(nobody) groups=")
        assert "10" in out.split("groups=")[1].split()[0].split(",")
        assert out.split()[3:4] == ["lo"]  # the netns made above has only loopback
        assert "from host" in out and "touch=1" in out
        await runtime.delete(cid)
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)
