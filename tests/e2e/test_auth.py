"""Registry auth against `dockyard up` with real skopeo: admin push, visibility, grants, login."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.conftest import skopeo
from tests.support.images import oci_layout, skopeo_env, tar_dir

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dyau-img")
    root = tmp / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(os.urandom(4096))
    layout = tmp / "layout"
    return f"oci:{layout}:latest", oci_layout(layout, [tar_dir(root)])


@pytest.fixture
def env(tmp_path):
    """skopeo with no credentials of its own (its auth file and cache in tmp)."""
    return skopeo_env(tmp_path / "home")


def push(stack, env, image, repo: str, creds: str | None, check: bool = True):
    args = ["copy", "--dest-tls-verify=false"] + ([f"--dest-creds={creds}"] if creds else ["--dest-no-creds"])
    return skopeo(*args, image[0], f"docker://{stack.registry_addr}/{repo}", env=env, check=check)


def inspect(stack, env, repo: str, creds: str | None, check: bool = True):
    args = ["inspect", "--raw", "--tls-verify=false"] + ([f"--creds={creds}"] if creds else ["--no-creds"])
    return skopeo(*args, f"docker://{stack.registry_addr}/{repo}", env=env, check=check)


def digest_of(raw: str) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def test_admin_push_and_repository_visibility(stack, image, env):
    push(stack, env, image, "dyau/private:1", stack.admin_creds)
    assert digest_of(inspect(stack, env, "dyau/private:1", stack.admin_creds).stdout) == image[1]
    denied = inspect(stack, env, "dyau/private:1", None, check=False)
    assert denied.returncode != 0 and ("401" in denied.stderr or "unauthorized" in denied.stderr.lower())
    assert push(stack, env, image, "dyau/anon:1", None, check=False).returncode != 0

    stack.cli("repo", "public", "dyau/private")
    assert digest_of(inspect(stack, env, "dyau/private:1", None).stdout) == image[1]
    stack.cli("repo", "private", "dyau/private")
    assert inspect(stack, env, "dyau/private:1", None, check=False).returncode != 0


def test_granted_user_pulls_and_pushes_only_where_granted(stack, image, env):
    push(stack, env, image, "dyau/secret:1", stack.admin_creds)
    stack.cli("user", "add", "dyau-bob", "--password-stdin", input="bob pw\n")
    stack.cli("grant", "dyau-bob", "dyau/bob/*", "push")
    bob = "dyau-bob:bob pw"
    push(stack, env, image, "dyau/bob/app:1", bob)
    assert digest_of(inspect(stack, env, "dyau/bob/app:1", bob).stdout) == image[1]
    assert push(stack, env, image, "dyau/elsewhere:1", bob, check=False).returncode != 0
    assert inspect(stack, env, "dyau/secret:1", bob, check=False).returncode != 0

    stack.cli("grant", "dyau-bob", "dyau/secret", "pull")
    assert digest_of(inspect(stack, env, "dyau/secret:1", bob).stdout) == image[1]
    assert push(stack, env, image, "dyau/secret:2", bob, check=False).returncode != 0
    assert inspect(stack, env, "dyau/secret:1", "dyau-bob:wrong", check=False).returncode != 0

    stack.cli("user", "rm", "dyau-bob")
    assert inspect(stack, env, "dyau/bob/app:1", bob, check=False).returncode != 0


def test_login_then_skopeo_uses_the_same_auth_file(stack, image, env, tmp_path):
    stack.cli("user", "add", "dyau-carol", "--password-stdin", input="carolpw\n")
    stack.cli("grant", "dyau-carol", "dyau/carol/*", "push")
    carol = {"DOCKER_CONFIG": str(tmp_path / "carol-docker")}  # not the auth file other tests log in to
    auth_file = os.path.join(carol["DOCKER_CONFIG"], "config.json")
    bad = stack.cli("login", "-u", "dyau-carol", "--password-stdin", input="nope\n", check=False, env=carol)
    assert bad.returncode != 0 and not os.path.exists(auth_file)

    out = stack.cli("login", "-u", "dyau-carol", "--password-stdin", input="carolpw\n", env=carol)
    assert "Login Succeeded" in out.stdout
    assert oct(os.stat(auth_file).st_mode & 0o777) == "0o600"
    assert stack.registry_addr in json.load(open(auth_file))["auths"]
    skopeo("copy", "--dest-tls-verify=false", "--authfile", auth_file, image[0],
           f"docker://{stack.registry_addr}/dyau/carol/app:1", env=env)
    got = skopeo("inspect", "--raw", "--tls-verify=false", "--authfile", auth_file,
                 f"docker://{stack.registry_addr}/dyau/carol/app:1", env=env)
    assert digest_of(got.stdout) == image[1]

    stack.cli("logout", env=carol)
    assert stack.registry_addr not in json.load(open(auth_file)).get("auths", {})
