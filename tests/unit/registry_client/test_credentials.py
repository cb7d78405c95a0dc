"""config.json credentials: round trip, file mode, and the same file read and written by skopeo."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess

import pytest

from shared.oci import mediatypes as mt
from shared.registry import CredentialStore, Credentials, RegistryClient


def test_round_trip_mode_and_format(tmp_path):
    path = tmp_path / "docker" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"auths": {"https://other:5000": {"auth": "eDp5"}}, "credsStore": "keep-me"}))
    store = CredentialStore(path)
    assert store.get("other:5000") == Credentials("x", "y")  # keys with a scheme, as old docker wrote
    store.store("127.0.0.1:5000", Credentials("alice", "p:ss wörd"))
    data = json.loads(path.read_text())
    assert data["credsStore"] == "keep-me"  # other settings survive
    assert base64.b64decode(data["auths"]["127.0.0.1:5000"]["auth"]).decode() == "alice:p:ss wörd"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.get("127.0.0.1:5000") == Credentials("alice", "p:ss wörd")
    assert "p:ss" not in repr(store.get("127.0.0.1:5000"))
    assert store.erase("127.0.0.1:5000") and not store.erase("127.0.0.1:5000")
    assert store.get("127.0.0.1:5000") is None
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp files left


def test_env_paths_and_podman_auth_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "d"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    podman = tmp_path / "run" / "containers" / "auth.json"
    podman.parent.mkdir(parents=True)
    podman.write_text(json.dumps({"auths": {"reg.example:443": {"auth": base64.b64encode(b"p:q").decode()}}}))
    store = CredentialStore()
    assert store.path == tmp_path / "d" / "config.json"
    assert store.get("reg.example:443") == Credentials("p", "q")
    store.store("reg.example:443", Credentials("d", "e"))  # the docker file wins once it has one
    assert store.get("reg.example:443") == Credentials("d", "e")


def test_malformed_file_is_an_error(tmp_path):
    from shared.errors import InvalidArgument
    p = tmp_path / "config.json"
    p.write_text("{not json")
    with pytest.raises(InvalidArgument):
        CredentialStore(p).get("x:1")


async def test_skopeo_reads_ours_and_we_read_skopeos(cncf_registry, session, make_image, tmp_path):
    reg = cncf_registry(users={"dyau": "dyaupw"})
    manifest, blobs = make_image([b"layer"])
    c = RegistryClient(session, reg.addr, credentials=("dyau", "dyaupw"))
    for d, b in blobs.items():
        await c.push_blob("dyau/app", d, len(b), b)
    await c.put_manifest("dyau/app", "v1", manifest, mt.OCI_MANIFEST)

    ours = tmp_path / "ours.json"
    CredentialStore(ours).store(reg.addr, Credentials("dyau", "dyaupw"))
    out = subprocess.run(["skopeo", "list-tags", "--authfile", str(ours), "--tls-verify=false",
                          f"docker://{reg.addr}/dyau/app"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Tags"] == ["v1"]
    denied = subprocess.run(["skopeo", "list-tags", "--authfile", str(tmp_path / "none.json"),
                             "--tls-verify=false", f"docker://{reg.addr}/dyau/app"],
                            capture_output=True, text=True, timeout=60)
    assert denied.returncode != 0

    theirs = tmp_path / "theirs.json"
    out = subprocess.run(["skopeo", "login", "--authfile", str(theirs), "--tls-verify=false",
                          "-u", "dyau", "--password-stdin", reg.addr], input="dyaupw\n",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert CredentialStore(theirs).get(reg.addr) == Credentials("dyau", "dyaupw")
