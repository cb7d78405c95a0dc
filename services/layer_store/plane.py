"""What the data plane's two route sets share: the app's keys and request helpers.

`http` (the services' own routes) and `oci_uploads` (the routes registry clients are sent
to) both import this; neither imports the other's handlers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from services.layer_store.storage.base import StorageDriver
from shared.dataplane_sign import DataplaneSigner
from shared.errors import InvalidArgument
from shared.layer_store_client import stream_chunks
from shared.messages.layer_store import BlobInfo, UploadCommitted, UploadTaken
from shared.oci.digest import Digest

log = logging.getLogger("dockyard.layer_store.http")

OnCommit = Callable[[BlobInfo], Awaitable[None]]
# (subject, request) -> reply: a session's commit hook asked over the bus
CommitHook = Callable[[str, UploadCommitted], Awaitable[UploadTaken]]

DRIVER = web.AppKey("driver", StorageDriver)
SIGNER = web.AppKey("signer", DataplaneSigner)
ON_COMMIT: web.AppKey[OnCommit | None] = web.AppKey("on_commit")
COMMIT_HOOK: web.AppKey[CommitHook | None] = web.AppKey("commit_hook")

# Bigger than aiohttp's 64 KiB so that the socket keeps being read while a batch is
# being written and hashed in the worker threads; aiohttp buffers up to twice this per
# request before it stops reading the socket, so every upload in flight holds it too.
READ_BUFSIZE = 256 << 10
DIGEST_HEADER = "Docker-Content-Digest"


def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    return stream_chunks(request.content)


def digest_param(request: web.Request) -> Digest:
    raw = request.query.get("digest")
    if not raw:
        raise InvalidArgument("commit needs ?digest=", detail_code="DIGEST_INVALID")
    return Digest(raw)


async def announce_commit(request: web.Request, info: BlobInfo) -> None:
    on_commit = request.app[ON_COMMIT]
    if on_commit is not None:
        try:
            await on_commit(info)
        except Exception:  # the blob is stored; a lost event must not fail the upload
            log.exception("blob.committed event for %s not sent", info.digest)
