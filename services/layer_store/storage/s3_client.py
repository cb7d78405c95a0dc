"""A small S3 client on aiohttp: the dozen object and multipart calls the driver needs.

Path-style addressing (`<endpoint>/<bucket>/<key>`), which AWS, MinIO, Ceph RGW, R2
and SeaweedFS all accept. Every payload is signed (x-amz-content-sha256 is the body's
sha256, which the server checks), so a body damaged in transit is refused rather
than stored. S3 failures become shared.errors classes here, at the adapter:
`NoSuchKey` (a NotFound), `PreconditionFailed` (a Conflict: a conditional write lost),
`InvalidRange`, and Unavailable for transport errors and 5xx.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import NamedTuple
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from services.layer_store.storage.s3_sigv4 import (EMPTY_SHA256, Credentials, canonical_query,
                                                   encode_path, sign)
from shared.errors import (Conflict, DockyardError, InvalidArgument, NotFound, PermissionDenied,
                           Unavailable)

log = logging.getLogger("dockyard.layer_store.s3")

META = "x-amz-meta-"
# Hashing a big body for the signature is done off the event loop.
_THREAD_HASH_BYTES = 1 << 20
_RETRIES = 3
_RETRY_STATUS = {500, 502, 503, 504}


class S3Error(DockyardError):
    """An S3 error reply that has no closer meaning for the driver."""


class NoSuchKey(NotFound):
    pass


class PreconditionFailed(Conflict):
    pass


class InvalidRange(InvalidArgument):
    http_status = 416


class ObjectHead(NamedTuple):
    size: int
    etag: str
    metadata: dict[str, str]
    last_modified: float


class ListedObject(NamedTuple):
    key: str
    size: int
    etag: str
    last_modified: float


class S3Config(NamedTuple):
    endpoint: str  # e.g. http://127.0.0.1:9000 or https://s3.eu-west-1.amazonaws.com
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]  # drop the XML namespace


def _find(el: ET.Element, name: str) -> str:
    for child in el:
        if _local(child.tag) == name:
            return child.text or ""
    return ""


def _iso_time(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else 0.0


def _http_time(value: str | None) -> float:
    try:
        return parsedate_to_datetime(value).timestamp() if value else 0.0
    except (TypeError, ValueError):
        return 0.0


def _error(status: int, body: bytes, what: str) -> DockyardError:
    code = message = ""
    try:
        root = ET.fromstring(body)
        code, message = _find(root, "Code"), _find(root, "Message")
    except ET.ParseError:
        pass
    text = f"S3 {what}: {status} {code or 'error'} {message}".rstrip()
    if status == 404 or code in ("NoSuchKey", "NoSuchUpload"):
        return NoSuchKey(text)
    if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
        return PreconditionFailed(text, detail_code="PRECONDITION_FAILED")
    if status == 416:
        return InvalidRange(text)
    if status == 403:
        return PermissionDenied(text)
    if status >= 500 or code in ("SlowDown", "InternalError", "RequestTimeout"):
        return Unavailable(text)
    return S3Error(text, detail_code=code or None)


class S3Client:
    def __init__(self, config: S3Config, *, connections: int = 64):
        self.config = config
        parts = urlsplit(config.endpoint.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"invalid S3 endpoint {config.endpoint!r}: want http(s)://host[:port]")
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._creds = Credentials(config.access_key, config.secret_key)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use: the driver is constructed outside any event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
                auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _signed(self, method: str, key: str, query: Sequence[tuple[str, str]],
                      headers: Mapping[str, str], body: bytes) -> tuple[URL, dict[str, str]]:
        if not body:
            payload = EMPTY_SHA256
        elif len(body) >= _THREAD_HASH_BYTES:
            payload = await asyncio.to_thread(lambda: hashlib.sha256(body).hexdigest())
        else:
            payload = hashlib.sha256(body).hexdigest()
        path = encode_path(self.config.bucket, key)
        qs = canonical_query(query)
        signed = sign(method, self._host, path, query, headers, payload, self._creds,
                      self.config.region)
        # encoded=True: yarl must send the path and query exactly as they were signed.
        return URL(self._base + path + (f"?{qs}" if qs else ""), encoded=True), signed

    @asynccontextmanager
    async def _request(self, method: str, key: str = "", *, query: Sequence[tuple[str, str]] = (),
                       headers: Mapping[str, str] | None = None, body: bytes = b"",
                       retry: bool = True) -> AsyncIterator[aiohttp.ClientResponse]:
        """A signed request whose 2xx response the caller reads; errors are raised typed.

        Transport errors and 5xx are retried unless `retry` is False (a conditional write
        whose first attempt may have landed must not be replayed blindly)."""
        what = f"{method} {key or '/'}"
        attempts = _RETRIES if retry else 1
        data = body if body or method in ("PUT", "POST") else None
        for attempt in range(attempts):
            url, signed = await self._signed(method, key, query, headers or {}, body)
            try:
                resp = await self._http().request(method, url, headers=signed, data=data,
                                                  skip_auto_headers=("Content-Type",))
                if resp.status < 300:
                    break
                try:
                    err = _error(resp.status, await resp.read(), what)
                finally:
                    resp.release()
                if resp.status not in _RETRY_STATUS or attempt == attempts - 1:
                    raise err
            except aiohttp.ClientError as e:
                if attempt == attempts - 1:
                    raise Unavailable(f"S3 {what}: {e}") from e
            except asyncio.TimeoutError as e:
                if attempt == attempts - 1:
                    raise Unavailable(f"S3 {what}: timed out") from e
            log.debug("retrying S3 %s", what)
            await asyncio.sleep(0.1 * 4 ** attempt)
        try:
            yield resp
        except aiohttp.ClientError as e:  # the body broke off while the caller read it
            raise Unavailable(f"S3 {what}: {e}") from e
        except asyncio.TimeoutError as e:
            raise Unavailable(f"S3 {what}: timed out reading") from e
        finally:
            resp.release()

    async def _xml(self, resp: aiohttp.ClientResponse, what: str) -> ET.Element:
        """The reply document; some calls (copy, complete) report errors inside a 200."""
        body = await resp.read()
        try:
            root = ET.fromstring(body)
        except ET.ParseError as e:
            raise S3Error(f"S3 {what}: unreadable reply") from e
        if _local(root.tag) == "Error":
            raise _error(500 if _find(root, "Code") in ("InternalError", "SlowDown") else 400, body, what)
        return root

    # ---- objects ------------------------------------------------------------------------

    async def put_object(self, key: str, body: bytes, *, metadata: Mapping[str, str] | None = None,
                         if_none_match: bool = False, if_match: str | None = None) -> str:
        """Store `body` at `key` and return its ETag; conditional writes raise PreconditionFailed."""
        headers = {META + k: v for k, v in (metadata or {}).items()}
        headers["content-type"] = "application/octet-stream"
        if if_none_match:
            headers["if-none-match"] = "*"
        if if_match is not None:
            headers["if-match"] = if_match
        conditional = if_none_match or if_match is not None
        async with self._request("PUT", key, headers=headers, body=body, retry=not conditional) as resp:
            return resp.headers.get("ETag", "")

    async def head_object(self, key: str) -> ObjectHead | None:
        try:
            async with self._request("HEAD", key) as resp:
                meta = {k.lower()[len(META):]: v for k, v in resp.headers.items()
                        if k.lower().startswith(META)}
                return ObjectHead(size=int(resp.headers.get("Content-Length", "0")),
                                  etag=resp.headers.get("ETag", ""), metadata=meta,
                                  last_modified=_http_time(resp.headers.get("Last-Modified")))
        except NoSuchKey:
            return None

    async def get_object(self, key: str, *, if_match: str | None = None) -> tuple[bytes, str] | None:
        """A small object's bytes and ETag, or None when absent."""
        headers = {"if-match": if_match} if if_match else {}
        try:
            async with self._request("GET", key, headers=headers) as resp:
                return await resp.read(), resp.headers.get("ETag", "")
        except NoSuchKey:
            return None

    @asynccontextmanager
    async def open_object(self, key: str, byte_range: str | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streaming GET (NoSuchKey when absent, InvalidRange past the end)."""
        headers = {"range": byte_range} if byte_range else {}
        async with self._request("GET", key, headers=headers) as resp:
            yield resp

    async def delete_object(self, key: str) -> None:
        try:
            async with self._request("DELETE", key):
                pass
        except NoSuchKey:
            pass  # S3 answers 204 anyway; some servers say 404

    async def list_objects(self, prefix: str, start_after: str = "",
                           page_size: int = 1000) -> AsyncIterator[ListedObject]:
        """Every object under `prefix` in key order, strictly after `start_after`."""
        token = ""
        while True:
            query = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(page_size))]
            if token:
                query.append(("continuation-token", token))
            elif start_after:
                query.append(("start-after", start_after))
            async with self._request("GET", query=query) as resp:
                root = await self._xml(resp, f"list {prefix}")
            for el in root:
                if _local(el.tag) == "Contents":
                    yield ListedObject(key=_find(el, "Key"), size=int(_find(el, "Size") or 0),
                                       etag=_find(el, "ETag"),
                                       last_modified=_iso_time(_find(el, "LastModified")))
            token = _find(root, "NextContinuationToken")
            if _find(root, "IsTruncated") != "true" or not token:
                return

    # ---- multipart ----------------------------------------------------------------------

    async def create_multipart_upload(self, key: str, metadata: Mapping[str, str]) -> str:
        headers = {META + k: v for k, v in metadata.items()}
        headers["content-type"] = "application/octet-stream"
        async with self._request("POST", key, query=[("uploads", "")], headers=headers) as resp:
            return _find(await self._xml(resp, f"create upload {key}"), "UploadId")

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        query = [("partNumber", str(number)), ("uploadId", upload_id)]
        async with self._request("PUT", key, query=query, body=body) as resp:
            return resp.headers.get("ETag", "")

    async def upload_part_copy(self, key: str, upload_id: str, number: int, source: str,
                               source_etag: str) -> str:
        """Copy a whole object into a part, server-side, only if it still has `source_etag`."""
        query = [("partNumber", str(number)), ("uploadId", upload_id)]
        headers = {"x-amz-copy-source": encode_path(self.config.bucket, source),
                   "x-amz-copy-source-if-match": source_etag}
        async with self._request("PUT", key, query=query, headers=headers) as resp:
            return _find(await self._xml(resp, f"copy part {source}"), "ETag")

    async def complete_multipart_upload(self, key: str, upload_id: str, etags: Sequence[str], *,
                                        if_none_match: bool = False) -> str:
        parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(e)}</ETag></Part>"
                        for n, e in enumerate(etags, 1))
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        headers = {"content-type": "application/xml"}
        if if_none_match:
            headers["if-none-match"] = "*"
        async with self._request("POST", key, query=[("uploadId", upload_id)], headers=headers,
                                 body=body, retry=not if_none_match) as resp:
            return _find(await self._xml(resp, f"complete {key}"), "ETag")

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        try:
            async with self._request("DELETE", key, query=[("uploadId", upload_id)]):
                pass
        except NoSuchKey:
            pass

    async def create_bucket(self) -> None:
        """Create the bucket (for test fixtures and first start); an existing one of ours is fine."""
        body = b""
        if self.config.region != "us-east-1":
            body = (f"<CreateBucketConfiguration><LocationConstraint>{self.config.region}"
                    f"</LocationConstraint></CreateBucketConfiguration>").encode()
        try:
            async with self._request("PUT", body=body):
                pass
        except S3Error as e:
            if e.detail_code != "BucketAlreadyOwnedByYou":
                raise


def _xml_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
