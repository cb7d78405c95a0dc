"""Client of the layer-store: its bus verbs and its HTTP data plane, for other services.

    client = LayerStoreClient(nc, session, signer=DataplaneSigner(load_key(data_dir)))
                                                    # nc: a NATS connection or a BusClient
    info = await client.stat(digest, touch=True)    # NotFound (BLOB_UNKNOWN) when absent
    async with client.open_blob(digest, "bytes=0-99") as resp:
        async for chunk in resp.content.iter_any(): ...
    upload = await client.start_upload()
    await client.append(upload, request.content, start=0)   # bytes, async iterator or StreamReader
    info = await client.commit(upload, digest, size)

Errors come back as the classes of `shared.errors` (rebuilt from the JSON error body),
plus `RangeNotSatisfiable` (an InvalidArgument with HTTP status 416) for an unsatisfiable
read range or an upload chunk at the wrong offset. Every data-plane request is signed
(shared.dataplane_sign) with the key the layer-store verifies against.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec
from yarl import URL

from shared import codec, subjects
from shared.bus import BusClient
from shared.dataplane_sign import INTERNAL_TTL, DataplaneSigner
from shared.errors import (Conflict, DockyardError, Internal, InvalidArgument, NotFound,
                           PermissionDenied, Unavailable, from_code)
from shared.messages.common import Empty, ErrorReply, Ok
from shared.messages.layer_store import (AbortRequest, BlobInfo, DeleteReply, DeleteRequest,
                                         ListReply, ListRequest, LocateReply, StatReply,
                                         StartUploadRequest, StatRequest, UploadInfo, UploadListReply,
                                         UsageReply)
from shared.oci.digest import Digest

T = TypeVar("T")

RANGE_INVALID = "RANGE_INVALID"
# An upload chunk's offset when its length is unknown (a streamed body): Content-Range
# needs an end, so streams say where they start with this header (as tus does).
UPLOAD_OFFSET_HEADER = "Upload-Offset"
# Blob bodies may take long; only connecting and silence are bounded.
_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)


class RangeNotSatisfiable(InvalidArgument):
    """A read range outside the blob, or an upload chunk not at the session's current size."""

    http_status = 416

    def __init__(self, message: str, *, size: int | None = None,
                 detail_code: str | None = RANGE_INVALID, detail: object = None):
        super().__init__(message, detail_code=detail_code, detail=detail)
        self.size = size


_BY_STATUS: dict[int, type[DockyardError]] = {
    400: InvalidArgument, 403: PermissionDenied, 404: NotFound, 409: Conflict, 416: RangeNotSatisfiable,
    503: Unavailable,
}

BodyData = bytes | AsyncIterable[bytes] | aiohttp.StreamReader


def error_from_response(status: int, body: bytes, reason: str = "") -> DockyardError:
    """The typed error a layer-store HTTP reply carries (JSON {"code","message","detail_code"})."""
    try:
        err = codec.decoder(ErrorReply).decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        cls = _BY_STATUS.get(status, Internal)
        detail = "BLOB_UNKNOWN" if status == 404 else RANGE_INVALID if status == 416 else None
        return cls(f"layer-store: HTTP {status} {reason}".strip(), detail_code=detail)
    if status == 416 or err.detail_code == RANGE_INVALID:
        return RangeNotSatisfiable(err.message, detail_code=err.detail_code)
    return from_code(err.code, err.message, err.detail_code)


class LayerStoreClient:
    def __init__(self, nc_or_bus: Any, session: aiohttp.ClientSession, *, signer: DataplaneSigner,
                 timeout: float = 10.0, url: str | None = None):
        self.bus = nc_or_bus if isinstance(nc_or_bus, BusClient) else BusClient(nc_or_bus)
        self.session = session
        self.signer = signer
        self.timeout = timeout
        self._fixed_url = url
        self._url: str | None = url

    # ---- bus verbs ------------------------------------------------------------------

    async def _call(self, subject: str, msg: msgspec.Struct, reply: type[T]) -> T:
        return await self.bus.request(subject, msg, reply, timeout=self.timeout)

    async def locate(self, refresh: bool = False) -> str:
        """The base URL of the HTTP data plane (cached; `refresh` asks again)."""
        if self._url is None or (refresh and self._fixed_url is None):
            self._url = (await self._call(subjects.BLOB_LOCATE, Empty(), LocateReply)).url.rstrip("/")
        return self._url

    async def stat(self, digest: Digest | str, touch: bool = False) -> BlobInfo:
        rep = await self._call(subjects.BLOB_STAT, StatRequest(digest=Digest(digest), touch=touch),
                               StatReply)
        return rep.blob

    async def delete(self, digest: Digest | str, *, unless_touched_since: float | None = None,
                     dry_run: bool = False) -> DeleteReply:
        return await self._call(subjects.BLOB_DELETE, DeleteRequest(
            digest=Digest(digest), unless_touched_since=unless_touched_since, dry_run=dry_run),
            DeleteReply)

    async def list(self, after: str = "", limit: int = 1000) -> ListReply:
        return await self._call(subjects.BLOB_LIST, ListRequest(after=after, limit=limit), ListReply)

    async def list_all(self, page_size: int = 1000) -> AsyncIterator[BlobInfo]:
        after = ""
        while True:
            page = await self.list(after, page_size)
            for b in page.blobs:
                yield b
            if not page.next:
                return
            after = page.next

    async def usage(self) -> UsageReply:
        return await self._call(subjects.BLOB_USAGE, Empty(), UsageReply)

    async def uploads(self) -> list[UploadInfo]:
        return (await self._call(subjects.UPLOAD_LIST, Empty(), UploadListReply)).uploads

    async def abort(self, upload_id: str) -> None:
        await self._call(subjects.UPLOAD_ABORT, AbortRequest(id=upload_id), Ok)

    # ---- HTTP data plane --------------------------------------------------------------

    async def _send(self, method: str, path: str, *, params: dict[str, str] | None = None,
                    headers: dict[str, str] | None = None, data: Any = None,
                    stream: bool = False, digest: str = "") -> aiohttp.ClientResponse:
        """One signed request; a refused connection re-locates the layer-store (it may have moved)."""
        for attempt in (0, 1):
            base = await self.locate(refresh=attempt > 0)
            query = {**(params or {}), **self.signer.sign(
                method, path, digest or (params or {}).get("digest", ""), INTERNAL_TTL)}
            try:
                resp = await self.session.request(
                    method, URL(base + path, encoded=True), params=query, headers=headers,
                    data=data, timeout=_STREAM_TIMEOUT if stream else aiohttp.ClientTimeout(
                        total=None, sock_connect=10, sock_read=120))
            except aiohttp.ClientConnectorError as e:
                # nothing was sent, so even a streamed body can be retried
                if attempt == 0 and self._fixed_url is None:
                    continue
                raise Unavailable(f"layer-store at {base} unreachable: {e}") from e
            except (aiohttp.ClientError, TimeoutError) as e:
                raise Unavailable(f"layer-store {method} {path}: {e}") from e
            if resp.status >= 400:
                try:
                    body = b"" if method == "HEAD" else await resp.read()
                finally:
                    resp.release()
                raise error_from_response(resp.status, body, resp.reason or "")
            return resp
        raise AssertionError("unreachable")

    async def _json(self, method: str, path: str, typ: type[T], **kw: Any) -> T:
        resp = await self._send(method, path, **kw)
        try:
            return codec.decode(await resp.read(), typ)
        except aiohttp.ClientError as e:
            raise Unavailable(f"layer-store {method} {path}: {e}") from e
        finally:
            resp.release()

    @asynccontextmanager
    async def open_blob(self, digest: Digest | str, range: str | tuple[int, int | None] | None = None,
                        *, method: str = "GET") -> AsyncIterator[aiohttp.ClientResponse]:
        """The blob's response (200, or 206 for a range), its body unread for streaming.

        `range` is a `Range` header value (passed through as is) or (first, last|None)."""
        headers = {}
        if isinstance(range, tuple):
            first, last = range
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        elif range:
            headers["Range"] = range
        digest = Digest(digest)
        resp = await self._send(method, f"/blobs/{digest}", headers=headers, stream=True, digest=digest)
        try:
            yield resp
        finally:
            resp.release()

    async def read_blob(self, digest: Digest | str) -> bytes:
        """A whole (small) blob in memory: configs and manifests, never layers."""
        async with self.open_blob(digest) as resp:
            return await resp.read()

    async def start_upload(self, algorithm: str = "sha256", labels: dict[str, str] | None = None) -> str:
        """A new session's id; `labels` stay with it (UPLOAD_HOOK_LABEL: OCI-protocol session)."""
        body = codec.encode(StartUploadRequest(labels=labels)) if labels else None
        info = await self._json("POST", "/uploads", UploadInfo, params={"algorithm": algorithm},
                                data=body, headers={"Content-Type": "application/json"} if body else None)
        return info.id

    async def append(self, upload_id: str, data: BodyData, start: int | None = None, *,
                     length: int | None = None) -> int:
        """Append a chunk (at `start`, checked against the session's size); the new size.
        `length`: a stream's byte count when known (sent as is, not chunk-encoded)."""
        headers = _length_header(data, length)
        if start is not None:
            if isinstance(data, (bytes, bytearray, memoryview)):
                if len(data):
                    headers["Content-Range"] = f"{start}-{start + len(data) - 1}"
                else:
                    headers[UPLOAD_OFFSET_HEADER] = str(start)
            else:
                headers[UPLOAD_OFFSET_HEADER] = str(start)
        info = await self._json("PATCH", f"/uploads/{_upload_path(upload_id)}", UploadInfo,
                                headers=headers, data=_body(data), stream=True)
        return info.size

    async def upload_status(self, upload_id: str) -> UploadInfo:
        return await self._json("GET", f"/uploads/{_upload_path(upload_id)}", UploadInfo)

    async def commit(self, upload_id: str, digest: Digest | str, size: int | None = None,
                     data: BodyData | None = None, *, length: int | None = None) -> BlobInfo:
        """Append the optional final body (of `length` bytes, when known), verify digest
        (and size), store the blob."""
        params = {"digest": str(Digest(digest))}
        if size is not None:
            params["size"] = str(size)
        return await self._json("PUT", f"/uploads/{_upload_path(upload_id)}", BlobInfo,
                                params=params, data=_body(data), stream=data is not None,
                                headers=_length_header(data, length) if data is not None else None)

    async def cancel(self, upload_id: str) -> None:
        resp = await self._send("DELETE", f"/uploads/{_upload_path(upload_id)}")
        resp.release()

    async def put_blob(self, data: BodyData, digest: Digest | str, size: int | None = None) -> BlobInfo:
        """Store a whole blob in one upload session (cancelled if the commit fails)."""
        upload_id = await self.start_upload(Digest(digest).algorithm)
        try:
            return await self.commit(upload_id, digest, size, data, length=size)
        except BaseException:
            try:
                await self.cancel(upload_id)
            except DockyardError:
                pass
            raise


_BIG_BODY = 1 << 20
_BODY_CHUNK = 256 << 10


def _length_header(data: BodyData | None, length: int | None) -> dict[str, str]:
    if length is None or isinstance(data, (bytes, bytearray, memoryview)):
        return {}  # bytes carry their own length
    return {"Content-Length": str(length)}


async def stream_chunks(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """A request's body, each buffer as the socket read it (iter_any would join what is
    buffered into a new bytes: a copy per read)."""
    while True:
        chunk, end_of_http_chunk = await stream.readchunk()
        if chunk:
            yield chunk
        elif not end_of_http_chunk:  # (b"", True) only marks a chunk boundary
            return


def _body(data: BodyData | None) -> Any:
    """What aiohttp sends best: it is slow with one huge bytes body, fast with its chunks."""
    if isinstance(data, aiohttp.StreamReader):
        return stream_chunks(data)
    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > _BIG_BODY:
        view = memoryview(data)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(view), _BODY_CHUNK):
                yield bytes(view[i:i + _BODY_CHUNK])
        return chunks()
    return data


def _upload_path(upload_id: str) -> str:
    # ids are hex; anything else must not change the path (the server answers 404)
    return quote(upload_id, safe="")
