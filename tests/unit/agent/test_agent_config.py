"""docker's run semantics: entrypoint/cmd/env/workdir/user, volumes, restart, sizes."""

from __future__ import annotations

import os

import pytest

from services.cli.commands.containers import parse_size
from services.runtime_agent.containers.config import (merge_env, parse_restart, parse_volumes, process_of,
                                                      read_in_root, resolve_user)
from shared.errors import InvalidArgument, NotFound
from shared.messages.agent import RunRequest, unix_time
from shared.oci.manifest import ContainerConfig

IMAGE = ContainerConfig(entrypoint=["/entry"], cmd=["serve", "--port=1"], env=["PATH=/bin", "A=1"],
                        working_dir="/app", user="app")


def req(**kw) -> RunRequest:
    return RunRequest(image="x", **kw)


def test_image_defaults_apply():
    p = process_of(IMAGE, req())
    assert p.args == ["/entry", "serve", "--port=1"]
    assert p.env == ["PATH=/bin", "A=1"] and p.cwd == "/app" and p.user == "app"


def test_command_replaces_cmd_only():
    assert process_of(IMAGE, req(command=["other"])).args == ["/entry", "other"]


def test_entrypoint_flag_drops_image_cmd():
    assert process_of(IMAGE, req(entrypoint=["/bin/sh"])).args == ["/bin/sh"]
    assert process_of(IMAGE, req(entrypoint=["/bin/sh"], command=["-c", "x"])).args == ["/bin/sh", "-c", "x"]
    assert process_of(IMAGE, req(entrypoint=[""], command=["ls"])).args == ["ls"]


def test_no_command_at_all_is_refused():
    with pytest.raises(InvalidArgument):
        process_of(ContainerConfig(), req())


def test_env_overrides_by_name_and_flags_win():
    assert merge_env(["A=1", "B=2"], ["A=3", "C="]) == ["A=3", "B=2", "C="]
    p = process_of(IMAGE, req(env=["A=2"], workdir="/w", user="0:0"))
    assert p.env == ["PATH=/bin", "A=2"] and p.cwd == "/w" and p.user == "0:0"
    with pytest.raises(InvalidArgument):
        process_of(IMAGE, req(workdir="relative"))


def test_volumes_and_restart_policies():
    v = parse_volumes(["/h:/c", "/h2:/c2:ro"])
    assert [(x.source, x.destination, x.readonly) for x in v] == [("/h", "/c", False), ("/h2", "/c2", True)]
    for bad in ("named:/c", "/h:rel", "/h:/", "/h:/c:xx", "/h"):
        with pytest.raises(InvalidArgument):
            parse_volumes([bad])
    assert parse_restart("on-failure:3").maximum_retry_count == 3
    assert parse_restart("always").name == "always"
    for bad in ("sometimes", "always:2", "on-failure:x", "on-failure:-1"):
        with pytest.raises(InvalidArgument):
            parse_restart(bad)


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\nwheel:x:10:app,other\nstaff:x:50:\n")
    return root


def test_users_resolve_through_the_images_files(rootfs):
    assert resolve_user(rootfs, "") == resolve_user(rootfs, "root")
    ids = resolve_user(rootfs, "app")
    assert (ids.uid, ids.gid, ids.additional_gids) == (1000, 1000, (10,))
    assert resolve_user(rootfs, "app:staff").gid == 50
    assert resolve_user(rootfs, "1000").gid == 1000  # numeric uid still finds its group
    assert (resolve_user(rootfs, "4242:4343").uid, resolve_user(rootfs, "4242:4343").gid) == (4242, 4343)
    with pytest.raises(InvalidArgument):
        resolve_user(rootfs, "nobody")
    with pytest.raises(InvalidArgument):
        resolve_user(rootfs, "app:nogroup")


def test_passwd_symlink_cannot_escape_the_rootfs(rootfs, tmp_path):
    secret = tmp_path / "host-passwd"
    secret.write_text("evil:x:0:0::/:/bin/sh\n")
    (rootfs / "etc/passwd").unlink()
    # absolute and relative escapes both resolve inside the rootfs, where nothing is
    (rootfs / "etc/passwd").symlink_to(str(secret))
    with pytest.raises(NotFound):
        read_in_root(rootfs, "etc/passwd")
    (rootfs / "etc/passwd").unlink()
    (rootfs / "etc/passwd").symlink_to("../../../../" + os.path.relpath(secret, "/"))
    with pytest.raises(NotFound):
        read_in_root(rootfs, "etc/passwd")
    with pytest.raises(InvalidArgument):
        resolve_user(rootfs, "evil")
    # a link that stays inside works, as in many images
    (rootfs / "real").write_text("x:x:7:7::/:/bin/sh\n")
    (rootfs / "etc/passwd").unlink()
    (rootfs / "etc/passwd").symlink_to("/real")
    assert resolve_user(rootfs, "x").uid == 7


def test_docker_size_units():
    assert parse_size("200m") == 200 << 20
    assert parse_size("1G") == 1 << 30
    assert parse_size("512kb") == 512 << 10
    assert parse_size("1024") == 1024
    assert parse_size("-1", allow_unlimited=True) == -1
    for bad in ("lots", "1x", "-5", "-1"):
        with pytest.raises(InvalidArgument):
            parse_size(bad)


def test_rfc3339_with_nanoseconds():
    assert unix_time("1970-01-01T00:00:01.500000000Z") == 1.5
    assert unix_time("") is None and unix_time("garbage") is None
