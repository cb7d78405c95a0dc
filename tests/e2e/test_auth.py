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


# ---- tokens, refusals and throttling against the real gateway ----------------------------

def http(stack, path: str, headers: dict[str, str] | None = None):
    """(status, headers, parsed JSON body) of a GET to the stack's registry."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"{stack.registry_url}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read() or b"null")


def basic(user: str, pw: str) -> dict[str, str]:
    import base64
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def unauthorized(name: str | None, *actions: str) -> dict:
    detail = None if name is None else [{"Type": "repository", "Class": "", "Name": name, "Action": a}
                                        for a in actions]
    return {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": detail}]}


def test_token_key_is_private_and_tokens_are_es256(stack):
    import stat

    import jwt as pyjwt
    d = stack.data_dir / "credentials"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "registry-token.key").stat().st_mode) == 0o600
    status, _, body = http(stack, "/token?service=dockyard&scope=repository:dyau/x:pull",
                           basic("admin", stack.admin_password))
    assert status == 200
    header = pyjwt.get_unverified_header(body["token"])
    assert header["alg"] == "ES256" and header["kid"]
    pub = (d / "registry-token.pub").read_bytes()
    claims = pyjwt.decode(body["token"], pub, algorithms=["ES256"], audience="dockyard", issuer="dockyard")
    assert claims["access"] == [{"type": "repository", "name": "dyau/x", "actions": ["pull"]}]


def test_refusals_carry_distributions_challenges_and_are_logged(stack, image, env):
    import base64 as b64

    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import ec
    push(stack, env, image, "dyau/closed:1", stack.admin_creds)
    realm = f"{stack.registry_url}/token"
    status, headers, body = http(stack, "/v2/")
    assert status == 401 and headers["WWW-Authenticate"] == f'Bearer realm="{realm}",service="dockyard"'
    assert body == unauthorized(None)
    # docker's anonymous pull of a private repository: a token with no access, then insufficient_scope.
    status, _, tok = http(stack, "/token?service=dockyard&scope=repository:dyau/closed:pull")
    assert status == 200
    status, headers, body = http(stack, "/v2/dyau/closed/manifests/1", {"Authorization": f"Bearer {tok['token']}"})
    assert status == 401
    assert headers["WWW-Authenticate"] == (f'Bearer realm="{realm}",service="dockyard",'
                                           f'scope="repository:dyau/closed:pull",error="insufficient_scope"')
    assert body == unauthorized("dyau/closed", "pull")
    # Tokens this gateway did not sign: another key, alg=none, HS256 keyed with the public key.
    claims = pyjwt.decode(tok["token"], options={"verify_signature": False})
    claims["access"] = [{"type": "repository", "name": "dyau/closed", "actions": ["pull"]}]
    kid = pyjwt.get_unverified_header(tok["token"])["kid"]
    enc = lambda d: b64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    import hashlib
    import hmac
    pub = (stack.data_dir / "credentials" / "registry-token.pub").read_bytes()
    signing_input = f"{enc({'alg': 'HS256', 'kid': kid})}.{enc(claims)}"
    forged = [pyjwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": kid}),
              f"{enc({'alg': 'none', 'kid': kid})}.{enc(claims)}.",
              signing_input + "." + b64.urlsafe_b64encode(
                  hmac.new(pub, signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()]
    for bad in forged:
        status, headers, body = http(stack, "/v2/dyau/closed/manifests/1", {"Authorization": f"Bearer {bad}"})
        assert status == 401 and headers["WWW-Authenticate"].endswith(',error="invalid_token"')
        assert body == unauthorized("dyau/closed", "pull")
    log = stack.log("registry-gateway")
    assert "refused 401 GET /v2/dyau/closed/manifests/1 from 127.0.0.1: user=anonymous " \
           "scope=repository:dyau/closed:pull: the token does not grant the access asked" in log
    assert tok["token"] not in log and stack.admin_password not in log


def test_failed_logins_are_throttled(stack):
    for _ in range(5):
        status, _, _ = http(stack, "/token?service=dockyard", basic("dyau-guessed", "pw-Zq81x"))
        assert status == 401
    status, headers, body = http(stack, "/token?service=dockyard", basic("dyau-guessed", "pw-Zq81x"))
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert body["errors"][0]["code"] == "TOOMANYREQUESTS"
    log = stack.log("registry-gateway")
    assert "login failed: user=dyau-guessed from 127.0.0.1: throttled for 1 s" in log
    assert "pw-Zq81x" not in log
