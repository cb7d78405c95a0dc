"""A real S3 server for the tests: moto's server in its own process on 127.0.0.1.

Signature checking is switched on (moto then verifies every request's SigV4 signature
with botocore, the reference implementation): the first three requests, which create
an IAM user with a policy and an access key, are the only unauthenticated ones.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlencode

from services.layer_store.storage.s3_client import S3Config
from services.layer_store.storage.s3_sigv4 import Credentials, sign
from tests.support.ports import address_from_log

_ADMIN_POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'
_UNAUTHENTICATED_SETUP_CALLS = 3


class S3Server(NamedTuple):
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def config(self, bucket: str) -> S3Config:
        return S3Config(self.endpoint, bucket, self.access_key, self.secret_key, self.region)


def _iam(endpoint: str, params: dict[str, str]) -> ET.Element:
    """One IAM query-API call (signed with throw-away keys: moto does not check these)."""
    body = urlencode({**params, "Version": "2010-05-08"}).encode()
    host = endpoint.split("://", 1)[1]
    headers = sign("POST", host, "/", [], {"content-type": "application/x-www-form-urlencoded"},
                   hashlib.sha256(body).hexdigest(), Credentials("AKIDSETUP", "setup"), "us-east-1",
                   service="iam", now=dt.datetime.now(dt.timezone.utc))
    req = urllib.request.Request(endpoint + "/", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return ET.fromstring(resp.read())


def _text(root: ET.Element, name: str) -> str:
    for el in root.iter():
        if el.tag.rpartition("}")[2] == name:
            return el.text or ""
    raise KeyError(name)


def start_moto(workdir: Path) -> tuple[subprocess.Popen, S3Server]:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_UNAUTHENTICATED_SETUP_CALLS),
           "PYTHONUNBUFFERED": "1"}
    log = open(workdir / "moto.log", "wb")
    # port 0: werkzeug binds, then prints the address it got
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", "0"], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=workdir, start_new_session=True)
    log.close()
    try:
        endpoint = "http://" + address_from_log(workdir / "moto.log", r"Running on http://(127\.0\.0\.1:\d+)", proc)
        user = f"dys3-{uuid.uuid4().hex[:8]}"
        _iam(endpoint, {"Action": "CreateUser", "UserName": user})
        _iam(endpoint, {"Action": "PutUserPolicy", "UserName": user, "PolicyName": "all",
                        "PolicyDocument": _ADMIN_POLICY})
        key = _iam(endpoint, {"Action": "CreateAccessKey", "UserName": user})
        return proc, S3Server(endpoint, _text(key, "AccessKeyId"), _text(key, "SecretAccessKey"))
    except BaseException:
        stop_moto(proc)
        raise


def stop_moto(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
