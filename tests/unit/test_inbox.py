"""`Inbox` (shared.messages.common): the progress_inbox of a request decodes only as an inbox."""

from __future__ import annotations

import pytest

from shared import codec
from shared.errors import InvalidArgument
from shared.messages.auth import CopyRequest
from shared.messages.builder import BuildRequest, ImportRequest
from shared.messages.gc import RunRequest

REQUESTS = [
    (BuildRequest, b'"context":"sha256:' + b"0" * 64 + b'","dockerfile":"FROM scratch"'),
    (ImportRequest, b'"source":"sha256:' + b"0" * 64 + b'","tag":"a:1"'),
    (CopyRequest, b'"source":"a:1","destination":"b:1"'),
    (RunRequest, b'"jobs":["uploads"]'),
]


def _json(fields: bytes, inbox: str) -> bytes:
    return b"{" + fields + b',"progress_inbox":' + codec.encode(inbox) + b"}"


@pytest.mark.parametrize("typ,fields", REQUESTS, ids=lambda x: getattr(x, "__name__", ""))
@pytest.mark.parametrize("inbox", ["", "_INBOX.2Xq8yEw1", "_INBOX.alice.2Xq8yEw1.7"])
def test_an_inbox_or_none_decodes(typ, fields, inbox):
    assert codec.decode(_json(fields, inbox), typ).progress_inbox == inbox


@pytest.mark.parametrize("typ,fields", REQUESTS, ids=lambda x: getattr(x, "__name__", ""))
@pytest.mark.parametrize("inbox", ["dockyard.blob.delete", "$JS.API.STREAM.DELETE.x", "_INBOX", "_INBOX.",
                                   "_INBOXES.x", "_INBOX.>", "_INBOX.*.x", "_INBOX.a b", "_INBOX..a",
                                   "x._INBOX.a", "_INBOX.a\n", "_INBOX." + "a" * 300])
def test_any_other_subject_is_refused(typ, fields, inbox):
    with pytest.raises(InvalidArgument, match=r"progress_inbox"):
        codec.decode(_json(fields, inbox), typ)
