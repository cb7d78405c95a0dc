"""Signed data-plane URLs: what a signature covers, its expiry, and the key file."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.dataplane_sign import UPLOAD, DataplaneSigner, key_path, load_key
from shared.errors import PermissionDenied, Unavailable

DIGEST = "sha256:" + "ab" * 32
PATH = f"/v2/dyrp/app/blobs/{DIGEST}"
NOW = 1_800_000_000.0


@pytest.fixture
def signer() -> DataplaneSigner:
    return DataplaneSigner(os.urandom(32))


def test_a_signature_opens_exactly_what_it_names(signer):
    q = signer.sign("GET", PATH, DIGEST, ttl=600, now=NOW)
    signer.verify("GET", PATH, DIGEST, q["exp"], q["sig"], now=NOW)
    signer.verify("HEAD", PATH, DIGEST, q["exp"], q["sig"], now=NOW)  # HEAD reads less than GET
    other = "sha256:" + "cd" * 32
    for method, path, digest, exp in (
            ("PUT", PATH, DIGEST, q["exp"]),                      # altered method
            ("DELETE", PATH, DIGEST, q["exp"]),
            ("GET", f"/v2/dyrp/other/blobs/{DIGEST}", DIGEST, q["exp"]),  # altered path
            ("GET", PATH, other, q["exp"]),                       # altered digest
            ("GET", PATH, DIGEST, str(int(q["exp"]) + 3600)),     # stretched expiry
    ):
        with pytest.raises(PermissionDenied) as e:
            signer.verify(method, path, digest, exp, q["sig"], now=NOW)
        assert e.value.detail_code == "DENIED"


def test_replay_after_expiry_is_refused(signer):
    q = signer.sign("GET", PATH, DIGEST, ttl=600, now=NOW)
    signer.verify("GET", PATH, DIGEST, q["exp"], q["sig"], now=NOW + 600)
    with pytest.raises(PermissionDenied, match="expired"):
        signer.verify("GET", PATH, DIGEST, q["exp"], q["sig"], now=NOW + 601)


def test_missing_malformed_or_foreign_signatures_are_refused(signer):
    q = signer.sign("GET", PATH, DIGEST)
    for exp, sig in ((None, None), (q["exp"], None), (None, q["sig"]), ("-1", q["sig"]),
                     ("soon", q["sig"]), ("\u00b2", q["sig"]), ("9" * 5000, q["sig"]), (q["exp"], q["sig"][:-1]),
                     (q["exp"], "\u00e9" * 64), (q["exp"], "")):
        with pytest.raises(PermissionDenied):
            signer.verify("GET", PATH, DIGEST, exp, sig)
    forger = DataplaneSigner(os.urandom(32))  # same scheme, another key
    f = forger.sign("GET", PATH, DIGEST)
    with pytest.raises(PermissionDenied):
        signer.verify("GET", PATH, DIGEST, f["exp"], f["sig"])


def test_an_upload_scope_is_not_a_method(signer):
    path = "/v2/dyrp/app/blobs/uploads/0123abcd"
    q = signer.sign(UPLOAD, path, ttl=3600)
    signer.verify(UPLOAD, path, "", q["exp"], q["sig"])
    for method in ("PATCH", "PUT", "GET"):
        with pytest.raises(PermissionDenied):
            signer.verify(method, path, "", q["exp"], q["sig"])


def test_signed_url_carries_the_query():
    signer = DataplaneSigner(b"k" * 32)
    url = signer.signed_url("http://127.0.0.1:1", "GET", PATH, DIGEST, ttl=10)
    assert url.startswith(f"http://127.0.0.1:1{PATH}?exp=") and "&sig=" in url


def test_short_keys_are_refused():
    with pytest.raises(ValueError):
        DataplaneSigner(b"short")


def test_key_file_is_made_once_private_and_shared(tmp_path):
    with ThreadPoolExecutor(8) as pool:  # two services starting at once agree on one key
        keys = set(pool.map(lambda _: load_key(tmp_path), range(16)))
    assert len(keys) == 1 and len(keys.pop()) == 32
    path = key_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["dataplane.key"]  # no staging file left


def test_a_credentials_dir_open_to_others_is_closed(tmp_path):
    (tmp_path / "credentials").mkdir(mode=0o755)
    load_key(tmp_path)
    assert stat.S_IMODE((tmp_path / "credentials").stat().st_mode) == 0o700


def test_a_key_open_to_others_is_refused(tmp_path):
    load_key(tmp_path)
    key_path(tmp_path).chmod(0o644)
    with pytest.raises(Unavailable, match="chmod 600"):
        load_key(tmp_path)

