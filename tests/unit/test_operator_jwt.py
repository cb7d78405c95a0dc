"""The server config's trusted operator stays byte-identical: nats-server refuses a reload
whose operator differs (and with it the revocations of `fleet remove`)."""

from __future__ import annotations

import time

from shared import credentials


def _operator_line(conf: str) -> str:
    return next(ln for ln in conf.splitlines() if ln.startswith("operator:"))


def test_the_operator_jwt_is_signed_once(tmp_path, monkeypatch):
    cdir = credentials.credentials_dir(tmp_path)
    first = credentials.Authority(cdir).server_config()
    later = time.time() + 3600
    monkeypatch.setattr(credentials.time, "time", lambda: later)  # an `iat` an hour on
    again = credentials.Authority(cdir).server_config({"UABC": int(later)})
    assert _operator_line(again) == _operator_line(first)
    assert again != first  # the account (with its revocations) is signed anew
    # another installation's keys: its own operator
    other = credentials.Authority(credentials.credentials_dir(tmp_path / "other")).server_config()
    assert _operator_line(other) != _operator_line(first)
