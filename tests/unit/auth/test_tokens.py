"""ES256 registry tokens: the key files, replicas sharing them, rotation, and every forgery refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import stat
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.registry_gateway.auth import tokenkeys
from services.registry_gateway.auth.scopes import Scope
from services.registry_gateway.auth.tokenkeys import PublicKeys, Signer, kid_of
from services.registry_gateway.auth.tokens import ISSUER, SERVICE, TokenIssuer, TokenVerifier
from shared.errors import Unauthenticated

PULL_APP = [Scope("repository", "g/app", frozenset({"pull"}))]


def issuer(data_dir) -> TokenIssuer:
    return TokenIssuer(Signer(data_dir), PublicKeys(data_dir))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**over) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": SERVICE, "sub": "gina", "iat": now, "nbf": now - 1, "exp": now + 60,
            "access": [{"type": "repository", "name": "g/app", "actions": ["pull", "push"]}], **over}


def private_key(data_dir) -> ec.EllipticCurvePrivateKey:
    return serialization.load_pem_private_key((data_dir / "credentials" / "registry-token.key").read_bytes(), None)


def test_key_files_are_private_and_the_public_key_verifies_alone(tmp_path):
    iss = issuer(tmp_path)
    d = tmp_path / "credentials"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "registry-token.key").stat().st_mode) == 0o600
    assert b"PRIVATE" not in (d / "registry-token.pub").read_bytes()
    assert sorted(p.name for p in d.iterdir()) == ["registry-token.key", "registry-token.pub"]
    tok = iss.issue("gina", PULL_APP, 60).token
    header = jwt.get_unverified_header(tok)
    assert header["alg"] == "ES256" and header["kid"] == kid_of(private_key(tmp_path).public_key())
    # A verifier that has only the .pub (another host's copy of it) accepts the token.
    other = tmp_path / "verifier"
    (other / "credentials").mkdir(parents=True)
    (other / "credentials" / "registry-token.pub").write_bytes((d / "registry-token.pub").read_bytes())
    got = TokenVerifier(PublicKeys(other)).verify(tok)
    assert got.subject == "gina" and got.access == {("repository", "g/app"): {"pull"}}


def _start_replica(data_dir: str, q) -> None:
    q.put(Signer(data_dir).key.kid)


def test_replicas_starting_together_end_up_with_one_key(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_start_replica, args=(str(tmp_path), q)) for _ in range(4)]
    for p in procs:
        p.start()
    kids = {q.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert kids == {kid_of(private_key(tmp_path).public_key())}
    assert [p.name for p in (tmp_path / "credentials").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("case", ["forged signature", "other key", "other key, same kid", "expired",
                                  "not yet valid", "issued in the future", "wrong audience", "wrong issuer",
                                  "no exp", "too long a life", "alg none", "HS256 with the public key",
                                  "not a jwt", "unknown kid"])
def test_forgeries_are_refused(tmp_path, case):
    iss = issuer(tmp_path)
    key = private_key(tmp_path)
    kid = kid_of(key.public_key())
    now = int(time.time())
    other = ec.generate_private_key(ec.SECP256R1())
    if case == "forged signature":
        head, body, sig = iss.issue("gina", PULL_APP, 60).token.split(".")
        fake = json.loads(base64.urlsafe_b64decode(body + "=="))
        fake["access"][0]["actions"] = ["pull", "push"]
        tok = ".".join((head, b64(json.dumps(fake).encode()), sig))
    elif case == "other key":
        tok = jwt.encode(claims(), other, algorithm="ES256", headers={"kid": kid_of(other.public_key())})
    elif case == "other key, same kid":
        tok = jwt.encode(claims(), other, algorithm="ES256", headers={"kid": kid})
    elif case == "alg none":
        tok = f"{b64(json.dumps({'alg': 'none', 'kid': kid}).encode())}.{b64(json.dumps(claims()).encode())}."
    elif case == "HS256 with the public key":
        # The classic algorithm confusion: the public key's bytes as an HMAC secret.
        pem = (tmp_path / "credentials" / "registry-token.pub").read_bytes()
        head = b64(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
        body = b64(json.dumps(claims()).encode())
        sig = b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
        tok = f"{head}.{body}.{sig}"
    elif case == "not a jwt":
        tok = "not-a-jwt"
    elif case == "unknown kid":
        tok = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "nope"})
    else:
        bad = {"expired": claims(exp=now - 60, iat=now - 120, nbf=now - 120),
               "not yet valid": claims(nbf=now + 60, exp=now + 120),
               "issued in the future": claims(iat=now + 60, exp=now + 120),
               "wrong audience": claims(aud="other-registry"),
               "wrong issuer": claims(iss="someone-else"),
               "no exp": {k: v for k, v in claims().items() if k != "exp"},
               "too long a life": claims(exp=now + 30 * 24 * 3600)}[case]
        tok = jwt.encode(bad, key, algorithm="ES256", headers={"kid": kid})
    with pytest.raises(Unauthenticated) as e:
        iss.verify(tok)
    assert e.value.http_status == 401
    # The same claims, signed properly, pass: the refusal is for the forgery alone.
    assert iss.verify(jwt.encode(claims(), key, algorithm="ES256", headers={"kid": kid})).subject == "gina"


def test_rotation_keeps_old_tokens_valid_until_they_expire(tmp_path):
    a, b = issuer(tmp_path), issuer(tmp_path)  # two replicas on one host
    old = a.issue("gina", PULL_APP, 300).token
    old_kid = jwt.get_unverified_header(old)["kid"]
    new_kid = tokenkeys.rotate(tmp_path)
    assert new_kid != old_kid
    d = tmp_path / "credentials"
    assert stat.S_IMODE((d / "registry-token.key").stat().st_mode) == 0o600
    time.sleep(1.1)  # past the replicas' recheck of the files
    fresh = b.issue("gina", PULL_APP, 300).token
    assert jwt.get_unverified_header(fresh)["kid"] == new_kid
    for verifier in (a, b):
        assert verifier.verify(old).subject == "gina"
        assert verifier.verify(fresh).subject == "gina"
    # Once every token of the old key has expired, the old key opens nothing.
    past = time.time() - tokenkeys.MAX_TOKEN_TTL - 10
    os.utime(d / "registry-token.previous.pub", (past, past))
    time.sleep(1.1)
    with pytest.raises(Unauthenticated, match="unknown key"):
        issuer(tmp_path).verify(old)
    with pytest.raises(Unauthenticated, match="unknown key"):
        a.verify(old)
    assert a.verify(fresh).subject == "gina"


def test_a_verifier_learns_a_new_key_at_its_first_token(tmp_path):
    verifier = TokenVerifier(PublicKeys(tmp_path))  # before any key exists
    assert verifier.verify(issuer(tmp_path).issue("gina", PULL_APP, 60).token).subject == "gina"
    tokenkeys.rotate(tmp_path)
    # Straight after the rotation: the unknown kid makes the verifier read the files again.
    assert verifier.verify(issuer(tmp_path).issue("gina", PULL_APP, 60).token).subject == "gina"


def test_a_stale_pub_file_is_repaired_and_does_not_lock_out_the_gateway(tmp_path):
    gateway = issuer(tmp_path)
    d = tmp_path / "credentials"
    old_pub = (d / "registry-token.pub").read_bytes()
    tokenkeys.rotate(tmp_path)
    # A replica that read the old key just before the rotation writes its .pub back.
    (d / "registry-token.pub").write_bytes(old_pub)
    time.sleep(1.1)
    tok = gateway.issue("gina", PULL_APP, 60).token
    assert gateway.verify(tok).subject == "gina"
    assert (d / "registry-token.pub").read_bytes() != old_pub
    assert TokenVerifier(PublicKeys(tmp_path)).verify(tok).subject == "gina"


def test_rotate_command(tmp_path, capsys):
    first = Signer(tmp_path).key.kid
    assert tokenkeys.main(["rotate", str(tmp_path)]) == 0
    assert Signer(tmp_path).key.kid != first and "new registry token key" in capsys.readouterr().out
    assert tokenkeys.main([]) == 2


def test_no_token_outlives_the_longest_lifetime(tmp_path):
    iss = issuer(tmp_path)
    issued = iss.issue("svc", PULL_APP, 10 * 24 * 3600)
    assert issued.expires_in == tokenkeys.MAX_TOKEN_TTL
    assert iss.verify(issued.token).expires_at <= time.time() + tokenkeys.MAX_TOKEN_TTL + 1
