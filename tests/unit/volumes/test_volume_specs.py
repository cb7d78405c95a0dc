"""Volume specs (`-v`, `--mount`, `--volumes-from`), the volume store, copy-up and placement by volume."""

from __future__ import annotations

import os
import stat

import pytest

from services.cli.mountflag import parse_mount
from services.runtime_agent.volumes import mounts
from services.runtime_agent.volumes.store import VolumeStore, disk_usage
from shared.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from shared.messages.volumes import ANONYMOUS_LABEL, Mount, label_matches
from shared.placement import volume_host


def test_dash_v_tells_binds_names_and_anonymous_apart():
    b = mounts.parse_v("/srv/x/../y:/data:ro")
    assert (b.kind, b.source, b.destination, b.readonly) == ("bind", "/srv/y", "/data", True)
    n = mounts.parse_v("db-data:/var/lib/db")
    assert (n.kind, n.name, n.destination, n.readonly, n.anonymous) == ("volume", "db-data", "/var/lib/db", False, False)
    a = mounts.parse_v("/cache")
    assert (a.kind, a.anonymous, a.destination) == ("volume", True, "/cache")
    assert mounts.parse_v("v:/d:nocopy").nocopy
    for bad in ["rel/path:/d", "v:/", "v:relative", "v:/d:rx", "a:b:c:d", "v:/d:ro,rw", "-v:/d"]:
        with pytest.raises(InvalidArgument):
            mounts.parse_v(bad)
    with pytest.raises(InvalidArgument, match="duplicate mount point"):
        mounts.parse(["a:/d", "/d"], [])


def test_mount_flag_in_docker_syntax():
    m = parse_mount("type=volume,src=data,dst=/d,readonly,volume-label=team=a,volume-nocopy=true")
    assert m == Mount(type="volume", source="data", target="/d", readonly=True, nocopy=True, labels={"team": "a"})
    assert parse_mount("type=bind,source=/h,target=/c,ro=false") == Mount(type="bind", source="/h", target="/c")
    t = parse_mount("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1770")
    assert (t.tmpfs_size, t.tmpfs_mode) == (1 << 20, 0o1770)
    for bad in ["type=nfs,target=/x", "type=volume,source=v", "type=bind,target=/x", "target=/x,readonly=maybe",
                "target=/x,volume-opt=a=b", "type=tmpfs,target=/t,tmpfs-mode=9"]:
        with pytest.raises(InvalidArgument):
            parse_mount(bad)
    assert mounts.parse_mount(Mount(type="tmpfs", target="/t")) is None
    with pytest.raises(InvalidArgument):
        mounts.parse_mount(Mount(type="volume", source="/abs", target="/d"))


def test_image_volumes_skip_what_a_mount_covers():
    got = mounts.image_volumes({"/data": {}, "/logs/": {}, "relative": {}, "/": {}}, {"/data"})
    assert [(v.destination, v.anonymous) for v in got] == [("/logs", True)]
    assert mounts.parse_from("c1:ro") == ("c1", True) and mounts.parse_from("c1") == ("c1", None)
    with pytest.raises(InvalidArgument):
        mounts.parse_from("c1:rx")


def test_store_create_reuse_remove_and_reload(tmp_path):
    s = VolumeStore(tmp_path / "v", "h1")
    rec = s.create("data", labels={"a": "1"})
    assert rec.host == "h1" and os.path.isdir(rec.mountpoint) and rec.needs_copy_up
    assert s.create("data") == rec  # docker: create of an existing name returns it
    with pytest.raises(AlreadyExists):
        s.create("data", options={"type": "tmpfs"})
    anon = s.create()
    assert anon.anonymous and len(anon.name) == 64 and ANONYMOUS_LABEL in anon.labels
    (tmp_path / "v" / "data" / "_data" / "f").write_bytes(b"x" * 10000)
    s.copied_up("data")
    again = VolumeStore(tmp_path / "v", "h1")
    assert {v.name for v in again.all()} == {"data", anon.name}
    assert not again.get("data").needs_copy_up
    assert again.size("data") >= 10000
    again.remove("data")
    assert again.find("data") is None and not (tmp_path / "v" / "data").exists()
    with pytest.raises(NotFound):
        again.get("data")
    for bad in ["", "../x", "a/b", ".hidden"]:
        with pytest.raises(InvalidArgument):
            again.create(bad or "/")
    with pytest.raises(InvalidArgument):
        again.create("x", driver="nfs")
    with pytest.raises(InvalidArgument):
        again.create("x", options={"size": "1"})


def test_bind_volumes_are_confined_to_the_volume_roots(tmp_path):
    root = tmp_path / "roots"
    (root / "d").mkdir(parents=True)
    (root / "out").symlink_to("/etc")
    s = VolumeStore(tmp_path / "v", "h1", (str(root),))
    rec = s.create("ok", options={"type": "none", "o": "bind", "device": str(root / "d")})
    assert rec.options["device"] == str(root / "d") and not rec.needs_copy_up
    for dev in ["/etc", str(root / "out")]:
        with pytest.raises(PermissionDenied):
            s.create("no", options={"type": "none", "o": "bind", "device": dev})


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_copy_up_keeps_owners_modes_and_stays_inside_the_rootfs(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "srv" / "data" / "sub").mkdir(parents=True)
    (rootfs / "srv" / "data" / "f").write_text("seed\n")
    os.chown(rootfs / "srv" / "data", 1234, 2345)
    os.chmod(rootfs / "srv" / "data", 0o750)
    os.chmod(rootfs / "srv" / "data" / "f", 0o640)
    (rootfs / "srv" / "data" / "link").symlink_to("/etc/passwd")
    (rootfs / "escape").symlink_to("/etc")  # a link to the host's /etc resolves inside the rootfs
    data = tmp_path / "data"
    data.mkdir()
    assert mounts.copy_up(rootfs, "/srv/data", data)
    st = os.stat(data)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 2345, 0o750)
    assert stat.S_IMODE(os.stat(data / "f").st_mode) == 0o640
    assert os.readlink(data / "link") == "/etc/passwd"  # copied as a link, not followed
    assert not mounts.copy_up(rootfs, "/srv/data", data)  # not empty any more: no second copy
    other = tmp_path / "other"
    other.mkdir()
    assert not mounts.copy_up(rootfs, "/escape", other)  # rootfs/etc does not exist
    assert not any(other.iterdir())
    assert disk_usage(data) > 0


def test_placement_follows_the_volume():
    holders = {"a": {"h1"}, "b": {"h1"}, "c": {"h2"}, "both": {"h1", "h2"}}
    assert volume_host(["a", "b"], holders) == "h1"
    assert volume_host(["new"], holders) is None
    assert volume_host(["both"], holders) is None
    assert volume_host(["both", "c"], holders) == "h2"
    with pytest.raises(InvalidArgument, match="different hosts"):
        volume_host(["a", "c"], holders)


def test_label_filters():
    assert label_matches({"a": "1", "b": ""}, ["a", "a=1", "b="])
    assert not label_matches({"a": "1"}, ["a=2"])
    assert not label_matches({}, ["a"])
