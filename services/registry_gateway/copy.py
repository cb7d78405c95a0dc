"""REGISTRY_COPY: push and pull between the stack registry and any other registry.

The gateway speaks the registry API on both sides: to the other registry with the
credentials the CLI sent (from its user's config.json), and to its own stack
registry over HTTP with a service token it issues itself, so the copy goes through
the same checks (manifest blob verification, GC touch) as any client's push.
"""

from __future__ import annotations

import time
import aiohttp

from shared import http_client, subjects
from shared.bus import BusService, publish_progress
from shared.config import Config
from shared.errors import InvalidArgument
from shared.messages.auth import CopyReply, CopyRequest, RegistryCredentials
from shared.messages.common import Progress
from shared.oci.reference import Reference
from shared.registry import CopyProgress, Credentials, RegistryClient, copy_image
from shared.registry.stackref import is_stack, stack_base_url

from .auth import Auth, parse_scopes

COPY_ACCOUNT = "registry-copy"
_PROGRESS_INTERVAL = 0.25  # seconds between byte-count updates of one blob


class CopyVerb:
    def __init__(self, service: BusService, auth: Auth, cfg: Config):
        self.nc = service.nc
        self.auth = auth
        self.cfg = cfg

    async def _service_token(self, scopes: list[str]) -> str:
        return self.auth.issue_service_token(COPY_ACCOUNT, parse_scopes(scopes)).token

    def _client(self, session: aiohttp.ClientSession, ref: Reference, creds: RegistryCredentials | None,
                insecure: bool | None) -> RegistryClient:
        if is_stack(ref, self.cfg):
            return RegistryClient(session, stack_base_url(self.cfg), token_provider=self._service_token)
        c = Credentials(creds.username, creds.password) if creds and creds.username else None
        return RegistryClient(session, ref.domain, credentials=c, insecure=insecure)

    async def copy(self, req: CopyRequest) -> CopyReply:
        src, dst = Reference.parse(req.source), Reference.parse(req.destination)
        if is_stack(src, self.cfg) and is_stack(dst, self.cfg):
            raise InvalidArgument("both references are in the stack registry: tag instead of copying")
        dst_tag = dst.tag or (None if dst.digest else "latest")  # digest only: push by digest
        if dst.digest and src.digest and dst.digest != src.digest:
            raise InvalidArgument(f"{dst} pins a digest other than the source's")
        last: dict[str, float] = {}

        async def progress(p: CopyProgress) -> None:
            now = time.monotonic()
            if p.event == "copying" and now - last.get(p.digest, 0.0) < _PROGRESS_INTERVAL:
                return
            last[p.digest] = now
            await publish_progress(self.nc, req.progress_inbox, Progress(
                kind="bytes", message=f"{p.digest.short}: {p.event}", current=p.current, total=p.total))

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        async with http_client.session(self.cfg.fleet_ca, timeout=timeout) as session:
            src_client = self._client(session, src, req.source_credentials, req.insecure)
            dst_client = self._client(session, dst, req.destination_credentials, req.insecure)
            result = await copy_image(src_client, src.path, src.reference, dst_client, dst.path, dst_tag,
                                      progress=progress)
        return CopyReply(digest=result.digest, media_type=result.media_type,
                         blobs_copied=result.stats.blobs_copied, blobs_skipped=result.stats.blobs_skipped,
                         bytes_copied=result.stats.bytes_copied)


def register(service: BusService, *, auth: Auth, cfg: Config, registry: object = None) -> None:
    """Add REGISTRY_COPY to the gateway's BusService (`registry` is accepted, not needed)."""
    verb = CopyVerb(service, auth, cfg)
    service.endpoint(subjects.REGISTRY_COPY, CopyRequest, verb.copy)
