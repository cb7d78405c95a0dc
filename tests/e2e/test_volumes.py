"""Named volumes (issue 12) against real agents and crun: data outlives containers, copy-up,
in-use refusals, anonymous volumes, --mount, --volumes-from, placement by volume."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from examples.busybox import busybox_rootfs, oci_layout, skopeo_env, tar_dir, write_blob
from tests.e2e.test_agent_fleet import running_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

GiB = 1 << 30
SEEDED = "library/seeded:latest"


def _layer_with_data() -> bytes:
    """/srv/data owned 1234:2345 mode 0750 with a 0640 file and a 0700 dir; /anon/x."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, mode: int, data: bytes | None = None, uid: int = 1234, gid: int = 2345) -> None:
            ti = tarfile.TarInfo(name)
            ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, 0
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        add("srv", 0o755, uid=0, gid=0)
        add("srv/data", 0o750)
        add("srv/data/f", 0o640, b"seeded\n")
        add("srv/data/sub", 0o700, uid=4321, gid=4321)
        add("anon", 0o755, uid=0, gid=0)
        add("anon/x", 0o644, b"from the image\n", uid=0, gid=0)
    return buf.getvalue()


def _push_seeded_image(root: Path, registry: str) -> None:
    layout = root / "seeded-layout"
    oci_layout(layout, [tar_dir(busybox_rootfs(root / "seeded-rootfs")), _layer_with_data()])
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    config["config"]["Volumes"] = {"/anon": {}}
    manifest["config"].update(write_blob(layout, json.dumps(config).encode()))
    m = write_blob(layout, json.dumps(manifest).encode())
    index["manifests"] = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
                           "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    (layout / "index.json").write_text(json.dumps(index))
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                    f"docker://{registry}/{SEEDED}"], env=skopeo_env(root / "home"), check=True,
                   capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def fleet(nats_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("volumes")
    with running_fleet(root, nats_url, {1: 2 * GiB, 2: 4 * GiB}) as f:
        _push_seeded_image(root, f.registry)
        yield f
        for name in f.cli("volume", "ls", "-q", check=False).stdout.split():
            f.cli("volume", "rm", "-f", name, check=False)


def _volumes(fleet) -> dict[str, str]:
    """name -> host of every volume `volume ls` shows."""
    return {v["name"]: v["host"] for v in json.loads(fleet.cli("volume", "ls", "--json").stdout)}


def _vinspect(fleet, name: str) -> dict:
    return json.loads(fleet.cli("volume", "inspect", name).stdout)[0]


def test_named_volume_outlives_its_container_and_lists_its_host(fleet):
    host = fleet.agents[0].id
    assert fleet.cli("volume", "create", "--host", host, "-l", "team=a", "keep").stdout.strip() == "keep"
    fleet.cli("run", "--rm", "--network", "none", "-v", "keep:/d", "busybox", "sh", "-c", "echo kept > /d/f")
    out = fleet.cli("run", "--rm", "--network", "none", "-v", "keep:/d:ro", "busybox", "cat", "/d/f").stdout
    assert out == "kept\n"
    info = _vinspect(fleet, "keep")
    assert (info["Host"], info["Driver"], info["Labels"], info["UsedBy"]) == (host, "local", {"team": "a"}, [])
    assert Path(info["Mountpoint"], "f").read_text() == "kept\n"
    table = fleet.cli("volume", "ls").stdout.splitlines()
    assert table[0].split() == ["DRIVER", "VOLUME", "NAME", "HOST"]
    assert ["local", "keep", host] in [ln.split() for ln in table[1:]]
    assert fleet.cli("volume", "ls", "-q", "--filter", "label=team=a").stdout.split() == ["keep"]
    assert "keep" not in fleet.cli("volume", "ls", "-q", "--filter", "label=team=b").stdout.split()
    fleet.cli("volume", "rm", "keep")
    assert not Path(info["Mountpoint"]).exists()
    assert "keep" not in _volumes(fleet)


def test_run_goes_to_the_host_that_has_the_volume(fleet):
    small = fleet.agents[0].id  # placement alone would pick the roomier agents[1]
    fleet.cli("volume", "create", "--host", small, "here")
    cid = fleet.cli("run", "-d", "--network", "none", "-v", "here:/d", "busybox", "sleep", "60").stdout.strip()
    assert fleet.inspect(cid)["Host"] == small
    # --host still wins: the volume is then made anew on that host
    other = fleet.agents[1].id
    cid2 = fleet.cli("run", "-d", "--host", other, "--network", "none", "-v", "here:/d", "busybox",
                     "sleep", "60").stdout.strip()
    assert fleet.inspect(cid2)["Host"] == other
    assert sorted(v["host"] for v in json.loads(fleet.cli("volume", "ls", "--json").stdout)
                  if v["name"] == "here") == sorted([small, other])
    r = fleet.cli("volume", "rm", "here", check=False)
    assert r.returncode != 0 and "--host" in r.stderr
    fleet.cli("rm", "-f", cid, cid2)
    fleet.cli("volume", "rm", "--host", small, "here")
    fleet.cli("volume", "rm", "--host", other, "here")


def test_copy_up_seeds_a_new_volume_with_owners_and_modes(fleet):
    out = fleet.cli("run", "--rm", "--network", "none", "-v", "seed:/srv/data", "seeded",
                    "sh", "-c", "cat /srv/data/f; stat -c '%u:%g %a' /srv/data /srv/data/f /srv/data/sub").stdout
    assert out.splitlines() == ["seeded", "1234:2345 750", "1234:2345 640", "4321:4321 700"]
    data = Path(_vinspect(fleet, "seed")["Mountpoint"])
    st = os.stat(data)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 2345, 0o750)
    # the data is the volume's now: a change survives, and no second copy-up overwrites it
    fleet.cli("run", "--rm", "--network", "none", "-v", "seed:/srv/data", "seeded",
              "sh", "-c", "echo changed > /srv/data/f")
    out = fleet.cli("run", "--rm", "--network", "none", "-v", "seed:/srv/data", "seeded",
                    "cat", "/srv/data/f").stdout
    assert out == "changed\n"
    # volume-nocopy: an empty volume stays empty
    out = fleet.cli("run", "--rm", "--network", "none", "--mount",
                    "type=volume,source=bare,target=/srv/data,volume-nocopy", "seeded",
                    "ls", "-A", "/srv/data").stdout
    assert out == ""
    fleet.cli("volume", "rm", "seed", "bare")


def test_removing_a_volume_in_use_is_refused_with_the_container_name(fleet):
    fleet.cli("run", "-d", "--name", "holder1", "--network", "none", "-v", "busy:/d", "busybox", "sleep", "60")
    for args in (["volume", "rm", "busy"], ["volume", "rm", "-f", "busy"]):
        r = fleet.cli(*args, check=False)
        assert r.returncode == 1 and "holder1" in r.stderr and "in use" in r.stderr
    fleet.cli("stop", "-t", "0", "holder1")
    r = fleet.cli("volume", "rm", "busy", check=False)  # a stopped container still holds it (docker)
    assert r.returncode == 1 and "holder1" in r.stderr
    assert "busy" not in fleet.cli("volume", "ls", "-q", "--filter", "dangling=true").stdout.split()
    fleet.cli("rm", "holder1")
    assert "busy" in fleet.cli("volume", "ls", "-q", "--filter", "dangling=true").stdout.split()
    fleet.cli("volume", "rm", "busy")
    assert "busy" not in _volumes(fleet)


def test_anonymous_volumes_of_the_image_and_rm_v_and_rm(fleet):
    before = set(_volumes(fleet))
    cid = fleet.cli("run", "-d", "--network", "none", "seeded", "sleep", "60").stdout.strip()
    mounts = fleet.inspect(cid)["Mounts"]
    (anon,) = [m for m in mounts if m["Destination"] == "/anon"]
    assert anon["Type"] == "volume" and len(anon["Name"]) == 64
    assert Path(anon["Source"], "x").read_text() == "from the image\n"  # copied up too
    assert set(_volumes(fleet)) - before == {anon["Name"]}
    fleet.cli("rm", "-f", "-v", cid)
    assert set(_volumes(fleet)) == before
    # --rm removes them too
    fleet.cli("run", "--rm", "--network", "none", "seeded", "cat", "/anon/x")
    assert set(_volumes(fleet)) == before
    # plain rm leaves them; prune takes the anonymous, prune -a the named ones too
    cid = fleet.cli("run", "-d", "--network", "none", "-v", "named1:/n", "seeded", "true").stdout.strip()
    anon = next(m["Name"] for m in fleet.inspect(cid)["Mounts"] if m["Destination"] == "/anon")
    fleet.cli("rm", "-f", cid)
    assert {anon, "named1"} <= set(_volumes(fleet))
    out = fleet.cli("volume", "prune", "-f").stdout
    assert anon in out and "named1" not in out and "Total reclaimed space" in out
    assert "named1" in _volumes(fleet) and anon not in _volumes(fleet)
    assert "named1" in fleet.cli("volume", "prune", "-f", "-a").stdout
    assert set(_volumes(fleet)) == before


def test_mount_flag_tmpfs_and_volumes_from(fleet):
    fleet.cli("run", "-d", "--name", "src1", "--network", "none",
              "--mount", "type=volume,source=shared1,target=/s", "--mount", "type=tmpfs,target=/t,tmpfs-size=1m",
              "busybox", "sh", "-c", "echo from-src1 > /s/f; sleep 60")
    tmp = fleet.cli("run", "--rm", "--network", "none", "--mount", "type=tmpfs,target=/t,tmpfs-size=1m",
                    "busybox", "grep", " /t ", "/proc/mounts").stdout
    assert tmp.startswith("tmpfs /t tmpfs") and "size=1024k" in tmp
    host = fleet.inspect("src1")["Host"]
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do [ -s /s/f ] && break; sleep 0.2; done; cat /s/f; touch /s/x"
    r = fleet.cli("run", "--rm", "--network", "none", "--volumes-from", "src1:ro", "busybox", "sh", "-c", script,
                  check=False)
    assert r.stdout == "from-src1\n" and r.returncode != 0 and "Read-only" in r.stderr + r.stdout
    assert fleet.cli("run", "--rm", "--network", "none", "--volumes-from", "src1", "busybox",
                     "sh", "-c", "echo both >> /s/f; cat /s/f").stdout == "from-src1\nboth\n"
    assert fleet.cli("volume", "inspect", "shared1").stdout and _vinspect(fleet, "shared1")["Host"] == host
    bad = fleet.cli("run", "--rm", "--mount", "type=volume,target=/x,bogus=1", "busybox", "true", check=False)
    assert bad.returncode != 0 and "bogus" in bad.stderr
    fleet.cli("rm", "-f", "src1")
    fleet.cli("volume", "rm", "shared1")


def test_tmpfs_volume_option(fleet):
    fleet.cli("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt", "o=size=2m", "tv")
    out = fleet.cli("run", "--rm", "--network", "none", "-v", "tv:/d", "busybox", "grep", " /d ",
                    "/proc/mounts").stdout
    assert out.startswith("tmpfs /d tmpfs") and "size=2048k" in out
    data = Path(_vinspect(fleet, "tv")["Mountpoint"])
    fleet.cli("volume", "rm", "tv")
    assert not data.exists() and str(data) not in Path("/proc/self/mountinfo").read_text()
    r = fleet.cli("volume", "create", "--opt", "type=none", "--opt", "o=bind", "--opt", "device=/etc", "hostdir",
                  check=False)
    assert r.returncode != 0 and "DOCKYARD_AGENT_VOLUME_ROOTS" in r.stderr
    assert "hostdir" not in _volumes(fleet)


def _du(paths: list[str]) -> int:
    if not paths:
        return 0
    out = subprocess.run(["du", "-s", "-c", "-B1", *paths], capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[-1].split()[0])


def test_system_df_equals_du_of_the_same_data(fleet):
    host = fleet.agents[0].id
    fleet.cli("volume", "create", "--host", host, "dfvol")
    fleet.cli("run", "--rm", "--host", host, "--network", "none", "-v", "dfvol:/d", "busybox",
              "sh", "-c", "dd if=/dev/zero of=/d/blob bs=1024 count=3000 2>/dev/null")
    cid = fleet.cli("run", "-d", "--host", host, "--network", "none", "busybox", "sh", "-c",
                    "dd if=/dev/zero of=/written bs=1024 count=2000 2>/dev/null; sleep 60").stdout.strip()
    name = fleet.inspect(cid)["Name"]
    for _ in range(100):  # until dd has written it all
        (reply,) = json.loads(fleet.cli("system", "df", "--host", host, "-v", "--json").stdout)["hosts"]
        if any(e["name"] == name and e["size"] >= 2000 * 1024 for e in reply["containers"]["entries"]):
            break
        time.sleep(0.1)
    (reply,) = json.loads(fleet.cli("system", "df", "--host", host, "-v", "--json").stdout)["hosts"]
    for kind in ("images", "containers", "volumes"):
        measured, du = reply[kind]["size"], _du(reply["paths"][kind])
        assert abs(measured - du) <= du * 0.01, (kind, measured, du)
    vol = next(e for e in reply["volumes"]["entries"] if e["name"] == "dfvol")
    assert vol["size"] >= 3000 * 1024 and not vol["active"]
    assert reply["volumes"]["reclaimable"] >= vol["size"]
    assert reply["images"]["total"] >= 1 and reply["images"]["active"] >= 1
    table = fleet.cli("system", "df").stdout.splitlines()
    assert table[0].split()[:2] == ["TYPE", "TOTAL"] and any(host in ln for ln in table[1:])
    fleet.cli("rm", "-f", cid)
    fleet.cli("volume", "rm", "dfvol")


def _df(fleet, host: str) -> dict:
    (reply,) = json.loads(fleet.cli("system", "df", "--host", host, "-v", "--json").stdout)["hosts"]
    return reply


def test_container_image_and_system_prune_free_what_they_say(fleet):
    from services.cli.commands.images import human_size
    host = fleet.agents[0].id
    keep = fleet.cli("run", "-d", "--host", host, "--network", "none", "busybox", "sleep", "60").stdout.strip()
    fleet.cli("run", "--host", host, "--name", "doomed1", "--network", "none", "-l", "tier=x", "busybox",
              "sh", "-c", "dd if=/dev/zero of=/junk bs=1024 count=1500 2>/dev/null")
    fleet.cli("run", "--host", host, "--name", "spared1", "--network", "none", "busybox", "true")
    size = next(e["size"] for e in _df(fleet, host)["containers"]["entries"] if e["name"] == "doomed1")
    out = fleet.cli("container", "prune", "-f", "--host", host, "--filter", "label=tier=x").stdout
    assert "doomed1" in out and "spared1" not in out
    assert out.strip().endswith(f"Total reclaimed space: {human_size(size)}")
    names = {c["name"] for c in json.loads(fleet.cli("ps", "-a", "--json", "--host", host).stdout)}
    assert "spared1" in names and "doomed1" not in names and keep[:12] in fleet.cli("ps", "-q").stdout
    # an image no container uses goes with -a; busybox, which a container runs, stays
    fleet.cli("run", "--rm", "--host", host, "--network", "none", "seeded", "true")
    before = _df(fleet, host)["images"]
    out = fleet.cli("image", "prune", "-f", "--host", host).stdout  # only dangling ones: none here
    assert "seeded" not in out
    out = fleet.cli("image", "prune", "-a", "-f", "--host", host).stdout
    assert "seeded" in out and "busybox" not in out
    after = _df(fleet, host)["images"]
    assert after["total"] == before["total"] - 1 and after["active"] == before["active"]
    assert out.strip().endswith(f"Total reclaimed space: {human_size(before['size'] - after['size'])}")
    # system prune: stopped containers and (with --volumes) unused anonymous volumes; no builder here
    cid = fleet.cli("run", "-d", "--host", host, "--network", "none", "seeded", "true").stdout.strip()
    anon = next(m["Name"] for m in fleet.inspect(cid)["Mounts"] if m["Destination"] == "/anon")
    fleet.cli("volume", "create", "--host", host, "named-stays")
    r = fleet.cli("system", "prune", "-f", "--volumes", "--host", host)
    assert "spared1" in r.stdout and anon in r.stdout and "named-stays" not in r.stdout
    assert "Total reclaimed space" in r.stdout and "build cache not pruned" in r.stderr
    assert "named-stays" in _volumes(fleet) and anon not in _volumes(fleet)
    assert keep[:12] in fleet.cli("ps", "-q").stdout  # nothing in use was touched
    fleet.cli("rm", "-f", keep)
    fleet.cli("volume", "rm", "named-stays")
