"""Test clients that sign each data-plane request as the registry-gateway would."""

from __future__ import annotations

import os
import re

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

from shared.dataplane_sign import UPLOAD, DataplaneSigner

_BLOB = re.compile(r"^(?:/v2/.+)?/blobs/([^/]+)$")


def new_signer() -> DataplaneSigner:
    return DataplaneSigner(os.urandom(32))


def signing(signer: DataplaneSigner):
    """A client middleware adding `exp` and `sig` for the request's method, path and digest."""
    async def middleware(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        path = req.url.path
        if path.startswith("/v2/") and "/blobs/uploads/" in path:
            method, digest = UPLOAD, ""
        elif m := _BLOB.match(path):
            method, digest = req.method, m[1]
        else:
            method, digest = req.method, req.url.query.get("digest", "")
        req.url = req.url.update_query(signer.sign(method, path, digest))
        return await handler(req)
    return middleware
