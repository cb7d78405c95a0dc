"""The gateway app's typed keys (what each handler finds on `request.app`)."""

from __future__ import annotations

from aiohttp import web

from services.registry_gateway.authz import Authorizer
from services.registry_gateway.core import Registry
from shared.admission import Admission
from shared.dataplane_sign import DataplaneSigner

REGISTRY = web.AppKey("registry", Registry)
AUTHORIZER = web.AppKey("authorizer", Authorizer)
# Signs the layer-store URLs handed to clients (and this gateway's own requests there).
SIGNER = web.AppKey("signer", DataplaneSigner)
# Answer blob GETs with a 307 to the layer-store instead of streaming through:
# "on", "off", or "auto" (when client and layer-store are both on loopback, so the
# client surely reaches the layer-store's advertised URL). The URL is signed and its path
# is this gateway's own, so a client that keeps only the path lands here and is served.
BLOB_REDIRECT = web.AppKey("blob_redirect", str)
# Send upload sessions' bytes straight to the layer-store (`Location` of the upload is
# the layer-store's OCI upload URL): same modes and the same loopback rule as above.
DIRECT_UPLOAD = web.AppKey("direct_upload", str)
# The bus subject the layer-store asks when a direct upload is committed.
UPLOAD_HOOK = web.AppKey("upload_hook", str)
# The listener's bound on requests in flight (shared.admission).
ADMISSION = web.AppKey("admission", Admission)
