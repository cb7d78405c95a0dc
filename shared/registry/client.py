"""An OCI distribution client (aiohttp): manifests and blobs, verified, streamed.

Used by the runtime-agent (pull), the builder (base images, push), the gateway's copy
verb and the CLI (login). Every byte that comes in is checked against its digest; a
blob goes to disk atomically (staged, verified, fsynced, renamed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, NamedTuple, Union

import aiohttp
from yarl import URL

from shared.errors import (Conflict, DockyardError, Internal, InvalidArgument, NotFound, PermissionDenied,
                           Unauthenticated, Unavailable)
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest, Hasher
from shared.oci.manifest import MAX_MANIFEST_BYTES, Descriptor, detect_media_type
from shared.oci.reference import DOCKER_HUB

from .auth import RegistryAuth, TokenProvider
from .credentials import CredentialStore, Credentials

CHUNK = 1 << 20
MONOLITHIC_MAX = 8 << 20  # blobs up to this size go in one PUT; larger ones stream in a PATCH
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_LINK_RE = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')

BlobSource = Union[bytes, str, os.PathLike, AsyncIterable[bytes], Callable[[], AsyncIterable[bytes]]]


class FetchedManifest(NamedTuple):
    media_type: str
    digest: Digest
    body: bytes


def _pull(repo: str) -> list[str]:
    return [f"repository:{repo}:pull"]


def _push(repo: str) -> list[str]:
    return [f"repository:{repo}:pull,push"]


def default_insecure(registry: str) -> bool:
    """Plain http for loopback registries only, as docker treats them."""
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    return host in _LOOPBACK or host.endswith(".localhost")


async def _error_from(resp: aiohttp.ClientResponse, what: str) -> DockyardError:
    """The shared.errors class for a registry's error reply (OCI `{"errors": [...]}` body)."""
    code, message = None, ""
    with contextlib.suppress(Exception):
        body = await resp.json(content_type=None)
        first = (body.get("errors") or [{}])[0]
        code, message = first.get("code"), first.get("message") or ""
    text = f"{what}: {resp.status} {code or resp.reason}" + (f": {message}" if message else "")
    s = resp.status
    if s == 401:
        return Unauthenticated(text, detail_code=code or "UNAUTHORIZED")
    if s == 403:
        return PermissionDenied(text, detail_code=code or "DENIED")
    if s == 404:
        return NotFound(text, detail_code=code)
    if s in (400, 405, 411, 413, 416, 422):
        return InvalidArgument(text, detail_code=code)
    if s == 409:
        return Conflict(text, detail_code=code)
    if s == 429 or s >= 500:
        return Unavailable(text, detail_code=code)
    return Internal(text, detail_code=code)


class RegistryClient:
    """One registry: `host[:port]`, or a base URL with its scheme."""

    def __init__(self, session: aiohttp.ClientSession, registry: str, *,
                 credentials: Credentials | CredentialStore | tuple[str, str] | None = None,
                 insecure: bool | None = None, token_provider: TokenProvider | None = None):
        if "://" in registry:
            url = URL(registry)
            self.registry = url.authority
            self.base_url = URL.build(scheme=url.scheme, authority=url.authority)
        else:
            self.registry = registry
            host = "registry-1.docker.io" if registry == DOCKER_HUB else registry
            secure = not (default_insecure(registry) if insecure is None else insecure)
            self.base_url = URL(f"{'https' if secure else 'http'}://{host}")
        self.session = session
        self.auth = RegistryAuth(session, self.registry, credentials, token_provider)

    def _url(self, path: str) -> URL:
        return self.base_url.join(URL(path, encoded=True)) if path.startswith("/") else URL(path)

    async def _send(self, method: str, url: URL | str, scopes: list[str], *, ok: tuple[int, ...],
                    what: str, headers: dict[str, str] | None = None, data: Any = None,
                    params: Any = None, replayable: bool = True, allow_404: bool = False,
                    read_bufsize: int | None = None) -> aiohttp.ClientResponse:
        """Send with auth; answer one 401 challenge; return the (unread) response or raise."""
        url = self._url(url) if isinstance(url, str) else url
        for attempt in (0, 1):
            h = dict(headers or {})
            authz = await self.auth.header(scopes)
            if authz:
                h["Authorization"] = authz
            try:
                resp = await self.session.request(method, url, headers=h, data=data, params=params,
                                                  allow_redirects=True, read_bufsize=read_bufsize)
            except aiohttp.ClientError as e:
                raise Unavailable(f"{what}: cannot reach {self.registry}: {e}") from e
            if resp.status == 401 and attempt == 0 and replayable:
                challenge = resp.headers.get("WWW-Authenticate")
                resp.release()
                await self.auth.on_challenge(challenge, scopes)
                continue
            if resp.status in ok or (allow_404 and resp.status == 404):
                return resp
            try:
                raise self.auth.refusal(await _error_from(resp, what), resp.headers.get("WWW-Authenticate"))
            finally:
                resp.release()
        raise AssertionError("unreachable")

    # ---- base ---------------------------------------------------------------------------

    async def ping(self) -> None:
        """GET /v2/: proves the registry speaks the API and accepts our credentials."""
        resp = await self._send("GET", "/v2/", [], ok=(200,), what=f"{self.registry}/v2/")
        resp.release()

    # ---- manifests ----------------------------------------------------------------------

    async def get_manifest(self, repo: str, ref: str, accept: str = mt.ACCEPT_ALL_MANIFESTS) -> FetchedManifest:
        """(media type, digest, body) of a manifest, its bytes checked against the digest."""
        what = f"manifest {self.registry}/{repo}:{ref}"
        resp = await self._send("GET", f"/v2/{repo}/manifests/{ref}", _pull(repo), ok=(200,), what=what,
                                headers={"Accept": accept})
        try:
            if resp.content_length is not None and resp.content_length > MAX_MANIFEST_BYTES:
                raise InvalidArgument(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(CHUNK):
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise InvalidArgument(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
            header_digest = resp.headers.get("Docker-Content-Digest")
            content_type = resp.headers.get("Content-Type", "")
        finally:
            resp.release()
        body = bytes(body)
        expected = Digest(ref) if ref.startswith(("sha256:", "sha512:")) else (
            Digest(header_digest) if header_digest else None)
        actual = Digest.from_bytes(body, expected.algorithm if expected else "sha256")
        if expected is not None and actual != expected:
            raise InvalidArgument(f"{what}: content digest {actual} is not {expected}",
                                  detail_code="DIGEST_INVALID")
        ct = content_type.split(";")[0].strip()
        media_type = ct if ct in mt.MANIFESTS else detect_media_type(body, ct)
        return FetchedManifest(media_type, actual, body)

    async def head_manifest(self, repo: str, ref: str, accept: str = mt.ACCEPT_ALL_MANIFESTS) -> Descriptor | None:
        """The manifest's descriptor, or None if the registry has no such manifest."""
        what = f"manifest {self.registry}/{repo}:{ref}"
        resp = await self._send("HEAD", f"/v2/{repo}/manifests/{ref}", _pull(repo), ok=(200,), what=what,
                                headers={"Accept": accept}, allow_404=True)
        resp.release()
        if resp.status == 404:
            return None
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest:  # some registries omit it on HEAD: fetch to know
            m = await self.get_manifest(repo, ref, accept)
            return Descriptor(media_type=m.media_type, digest=m.digest, size=len(m.body))
        ct = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return Descriptor(media_type=ct or mt.OCI_MANIFEST, digest=Digest(digest),
                          size=int(resp.headers.get("Content-Length") or 0))

    async def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> Digest:
        algorithm = Digest(ref).algorithm if ref.startswith(("sha256:", "sha512:")) else "sha256"
        digest = Digest.from_bytes(body, algorithm)
        if ref != digest and ref.startswith(("sha256:", "sha512:")):
            raise InvalidArgument(f"manifest digest {digest} is not {ref}", detail_code="DIGEST_INVALID")
        resp = await self._send("PUT", f"/v2/{repo}/manifests/{ref}", _push(repo), ok=(201, 200),
                                what=f"put manifest {self.registry}/{repo}:{ref}",
                                headers={"Content-Type": media_type}, data=body)
        resp.release()
        return digest

    async def delete_manifest(self, repo: str, digest: Digest) -> None:
        resp = await self._send("DELETE", f"/v2/{repo}/manifests/{Digest(digest)}",
                                [f"repository:{repo}:delete"], ok=(202, 200),
                                what=f"delete manifest {self.registry}/{repo}@{digest}")
        resp.release()

    # ---- blobs --------------------------------------------------------------------------

    async def blob_exists(self, repo: str, digest: Digest) -> int | None:
        """The blob's size if the registry has it in `repo`, else None."""
        resp = await self._send("HEAD", f"/v2/{repo}/blobs/{Digest(digest)}", _pull(repo), ok=(200,),
                                what=f"blob {self.registry}/{repo}@{digest}", allow_404=True)
        resp.release()
        return None if resp.status == 404 else int(resp.headers.get("Content-Length") or 0)

    @contextlib.asynccontextmanager
    async def open_blob(self, repo: str, digest: Digest, *, verify: bool = True,
                        read_bufsize: int | None = None) -> AsyncIterator["BlobStream"]:
        """A verified stream of the blob's bytes: iterating raises if the digest does not match.

        `verify=False` (size still checked) only for a caller that verifies what it keeps
        another way: `save` checks each decompressed layer against its diff id.
        `read_bufsize`: how much aiohttp reads ahead of the caller (its default is 64 KiB)."""
        digest = Digest(digest)
        what = f"blob {self.registry}/{repo}@{digest}"
        resp = await self._send("GET", f"/v2/{repo}/blobs/{digest}", _pull(repo), ok=(200,), what=what,
                                read_bufsize=read_bufsize)
        try:
            yield BlobStream(resp, digest, what, verify=verify)
        finally:
            resp.release()

    async def fetch_blob_to(self, repo: str, digest: Digest, dest: str | os.PathLike | IO[bytes]) -> int:
        """Write the blob to a path (atomically, only once verified) or a binary file; its size."""
        if not isinstance(dest, (str, os.PathLike)):
            async with self.open_blob(repo, digest) as stream:
                async for chunk in stream:
                    dest.write(chunk)
                return stream.received
        path = Path(dest)
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.partial")
        try:
            with open(tmp, "wb") as f:
                async with self.open_blob(repo, digest) as stream:
                    async for chunk in stream:
                        f.write(chunk)
                f.flush()
                await asyncio.to_thread(os.fsync, f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return stream.received

    async def push_blob(self, repo: str, digest: Digest, size: int, source: BlobSource, *,
                        mount_from: str | None = None, check_exists: bool = True) -> str:
        """Upload a blob unless the registry has it: "exists", "mounted" or "uploaded".

        `source` is bytes, a file path, an async iterable of chunks, or a callable that
        returns one (opened only if bytes must really travel).
        """
        digest = Digest(digest)
        what = f"push blob {self.registry}/{repo}@{digest}"
        if check_exists and await self.blob_exists(repo, digest) is not None:
            return "exists"
        scopes = _push(repo) + (_pull(mount_from) if mount_from and mount_from != repo else [])
        params = {"mount": str(digest), "from": mount_from} if mount_from and mount_from != repo else None
        resp = await self._send("POST", f"/v2/{repo}/blobs/uploads/", scopes, ok=(201, 202), what=what,
                                params=params)
        resp.release()
        if resp.status == 201:
            return "mounted"
        location = self._location(resp, what)
        if callable(source) and not isinstance(source, (bytes, str, os.PathLike)):
            source = source()
        if size <= MONOLITHIC_MAX:
            body = await _read_all(source)
            resp = await self._send("PUT", location.update_query(digest=str(digest)), scopes, ok=(201,),
                                    what=what, data=body,
                                    headers={"Content-Type": "application/octet-stream"})
            resp.release()
            return "uploaded"
        # A streamed PATCH cannot be replayed after a 401: the POST above has fetched the token.
        resp = await self._send("PATCH", location, scopes, ok=(202, 204), what=what, replayable=False,
                                data=_chunks(source),
                                headers={"Content-Type": "application/octet-stream",
                                         "Content-Length": str(size)})
        resp.release()
        location = self._location(resp, what)
        resp = await self._send("PUT", location.update_query(digest=str(digest)), scopes, ok=(201,), what=what,
                                headers={"Content-Length": "0"})
        resp.release()
        return "uploaded"

    def _location(self, resp: aiohttp.ClientResponse, what: str) -> URL:
        loc = resp.headers.get("Location")
        if not loc:
            raise Unavailable(f"{what}: the registry sent no upload Location")
        # Relative to the URL that answered (RFC 9110): an upload may have moved to another host.
        return resp.url.join(URL(loc, encoded=True))

    # ---- listings -----------------------------------------------------------------------

    async def _paged(self, path: str, scopes: list[str], key: str, what: str) -> list[str]:
        out: list[str] = []
        url: URL | str = path
        while url:
            resp = await self._send("GET", url, scopes, ok=(200,), what=what)
            try:
                body = await resp.json(content_type=None)
                link = resp.headers.get("Link", "")
            except ValueError as e:
                raise Unavailable(f"{what}: malformed JSON") from e
            finally:
                resp.release()
            out.extend((body or {}).get(key) or [])
            m = _LINK_RE.search(link)
            url = self._url(m.group(1)) if m else ""
        return out

    async def list_tags(self, repo: str) -> list[str]:
        return await self._paged(f"/v2/{repo}/tags/list?n=1000", _pull(repo), "tags",
                                 f"tags of {self.registry}/{repo}")

    async def catalog(self) -> list[str]:
        return await self._paged("/v2/_catalog?n=1000", ["registry:catalog:*"], "repositories",
                                 f"catalog of {self.registry}")


class BlobStream:
    """Chunks of a blob; the last iteration verifies size and digest."""

    def __init__(self, resp: aiohttp.ClientResponse, digest: Digest, what: str, *, verify: bool = True):
        self._resp = resp
        self.digest = digest
        self.size = resp.content_length
        self.received = 0
        self._what = what
        self._verify = verify

    async def __aiter__(self) -> AsyncIterator[bytes]:
        hasher = Hasher(self.digest.algorithm) if self._verify else None
        try:
            async for chunk in self._resp.content.iter_chunked(CHUNK):
                if hasher is not None:
                    hasher.update(chunk)
                self.received += len(chunk)
                yield chunk
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise Unavailable(f"{self._what}: transfer broke off: {e}") from e
        if self.size is not None and self.received != self.size:
            raise InvalidArgument(f"{self._what}: got {self.received} of {self.size} bytes",
                                  detail_code="SIZE_INVALID")
        if hasher is not None and hasher.digest() != self.digest:
            raise InvalidArgument(f"{self._what}: content digest {hasher.digest()} does not match",
                                  detail_code="DIGEST_INVALID")


async def _chunks(source: Any) -> AsyncIterator[bytes]:
    if isinstance(source, bytes):
        yield source
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
    else:
        async for chunk in source:
            yield chunk


async def _read_all(source: Any) -> bytes:
    if isinstance(source, bytes):
        return source
    return b"".join([c async for c in _chunks(source)])

