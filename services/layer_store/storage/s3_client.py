"""The S3 calls the driver needs, on aiobotocore.

aiobotocore brings what a hand-written client would have to re-earn: SigV4 for every
key and query, retries with back-off, the credential chain (environment, shared files,
instance metadata) when no keys are configured, and both path-style and virtual-host
addressing. This module keeps the driver's small interface and turns botocore's
failures into shared.errors classes, at the adapter: `NoSuchKey` (a NotFound),
`PreconditionFailed` (a Conflict: a conditional write lost), `InvalidRange`, and
Unavailable for transport errors and 5xx.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.session import get_session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import (Conflict, DockyardError, InvalidArgument, NotFound, PermissionDenied,
                           Unavailable)

log = logging.getLogger("dockyard.layer_store.s3")

_ATTEMPTS = 3
_RETRY_CODES = {"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable"}


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
    access_key: str = ""  # both empty: botocore's credential chain finds them
    secret_key: str = ""
    region: str = "us-east-1"
    addressing: str = "path"  # or "virtual" (bucket.host); path works on every server


def _error(e: ClientError, what: str) -> DockyardError:
    err = e.response.get("Error", {})
    code, message = str(err.get("Code", "")), str(err.get("Message", ""))
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    text = f"S3 {what}: {status} {code or 'error'} {message}".rstrip()
    if status == 404 or code in ("NoSuchKey", "NoSuchUpload", "404"):
        return NoSuchKey(text)
    if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
        return PreconditionFailed(text, detail_code="PRECONDITION_FAILED")
    if status == 416 or code == "InvalidRange":
        return InvalidRange(text)
    if status == 403 or code in ("AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
        return PermissionDenied(text)
    if status >= 500 or code in _RETRY_CODES:
        return Unavailable(text)
    return S3Error(text, detail_code=code or None)


@asynccontextmanager
async def _translated(what: str) -> AsyncIterator[None]:
    try:
        yield
    except ClientError as e:
        raise _error(e, what) from e
    except (BotoCoreError, aiohttp.ClientError) as e:
        raise Unavailable(f"S3 {what}: {e}") from e
    except asyncio.TimeoutError as e:
        raise Unavailable(f"S3 {what}: timed out") from e


class S3Client:
    def __init__(self, config: S3Config, *, connections: int = 64):
        parts = urlsplit(config.endpoint.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"invalid S3 endpoint {config.endpoint!r}: want http(s)://host[:port]")
        if config.addressing not in ("path", "virtual"):
            raise InvalidArgument(f"invalid S3 addressing {config.addressing!r}: want path or virtual")
        if bool(config.access_key) != bool(config.secret_key):
            raise InvalidArgument("S3 access key and secret key go together (or neither: the credential chain)")
        self.config = config
        self._connections = connections
        self._session = get_session()  # one, so that both clients share its loaded S3 model
        self._stack: AsyncExitStack | None = None
        self._clients: dict[bool, Any] = {}
        self._opening = asyncio.Lock()

    def _boto_config(self, retried: bool) -> BotoConfig:
        return BotoConfig(
            region_name=self.config.region, signature_version="s3v4",
            s3={"addressing_style": self.config.addressing},
            retries={"max_attempts": _ATTEMPTS if retried else 1, "mode": "standard"},
            max_pool_connections=self._connections, connect_timeout=10, read_timeout=120,
            # the driver checks every blob's sha256 itself; extra CRCs only cost CPU
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required")

    async def _client(self, retried: bool = True) -> Any:
        """The botocore client, made on first use (the driver is built outside any loop).

        Conditional writes go through a client that never retries: a first attempt that
        landed must not be replayed blindly (its replay would fail its own precondition)."""
        if retried not in self._clients:
            async with self._opening:
                if retried not in self._clients:
                    if self._stack is None:
                        self._stack = AsyncExitStack()
                    keys = {}
                    if self.config.access_key:
                        keys = {"aws_access_key_id": self.config.access_key,
                                "aws_secret_access_key": self.config.secret_key}
                    self._clients[retried] = await self._stack.enter_async_context(
                        self._session.create_client("s3", endpoint_url=self.config.endpoint,
                                                    config=self._boto_config(retried), **keys))
        return self._clients[retried]

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._clients = self._stack, None, {}
            await stack.aclose()

    def _args(self, key: str, **extra: Any) -> dict[str, Any]:
        return {"Bucket": self.config.bucket, "Key": key,
                **{k: v for k, v in extra.items() if v is not None}}

    # ---- objects ------------------------------------------------------------------------

    async def put_object(self, key: str, body: bytes | bytearray, *, metadata: Mapping[str, str] | None = None,
                         if_none_match: bool = False, if_match: str | None = None) -> str:
        """Store `body` at `key` and return its ETag; conditional writes raise PreconditionFailed."""
        conditional = if_none_match or if_match is not None
        client = await self._client(retried=not conditional)
        async with _translated(f"PUT {key}"):
            resp = await client.put_object(**self._args(
                key, Body=body, Metadata=dict(metadata or {}), ContentType="application/octet-stream",
                IfNoneMatch="*" if if_none_match else None, IfMatch=if_match))
        return resp.get("ETag", "")

    async def head_object(self, key: str) -> ObjectHead | None:
        client = await self._client()
        try:
            async with _translated(f"HEAD {key}"):
                resp = await client.head_object(**self._args(key))
        except NoSuchKey:
            return None
        modified = resp.get("LastModified")
        return ObjectHead(size=int(resp.get("ContentLength", 0)), etag=resp.get("ETag", ""),
                          metadata={k.lower(): v for k, v in resp.get("Metadata", {}).items()},
                          last_modified=modified.timestamp() if modified else 0.0)

    async def get_object(self, key: str, *, if_match: str | None = None) -> tuple[bytes, str] | None:
        """A small object's bytes and ETag, or None when absent."""
        client = await self._client()
        try:
            async with _translated(f"GET {key}"):
                resp = await client.get_object(**self._args(key, IfMatch=if_match))
                async with resp["Body"] as body:
                    return await body.read(), resp.get("ETag", "")
        except NoSuchKey:
            return None

    async def read_object(self, key: str, byte_range: str | None = None,
                          chunk: int = 1 << 20) -> AsyncIterator[bytes]:
        """A streaming GET in chunks of at most `chunk` bytes (NoSuchKey when absent,
        InvalidRange past the end)."""
        client = await self._client()
        async with _translated(f"GET {key}"):
            resp = await client.get_object(**self._args(key, Range=byte_range))
            async with resp["Body"] as body:
                async for data in body.iter_chunks(chunk):
                    yield data

    async def delete_object(self, key: str) -> None:
        client = await self._client()
        try:
            async with _translated(f"DELETE {key}"):
                await client.delete_object(**self._args(key))
        except NoSuchKey:
            pass  # S3 answers 204 anyway; some servers say 404

    async def list_objects(self, prefix: str, start_after: str = "",
                           page_size: int = 1000) -> AsyncIterator[ListedObject]:
        """Every object under `prefix` in key order, strictly after `start_after`."""
        client = await self._client()
        token = ""
        while True:
            args: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": prefix, "MaxKeys": page_size}
            if token:
                args["ContinuationToken"] = token
            elif start_after:
                args["StartAfter"] = start_after
            async with _translated(f"list {prefix}"):
                page = await client.list_objects_v2(**args)
            for obj in page.get("Contents", []):
                modified = obj.get("LastModified")
                yield ListedObject(key=obj["Key"], size=int(obj.get("Size", 0)), etag=obj.get("ETag", ""),
                                   last_modified=modified.timestamp() if modified else 0.0)
            token = page.get("NextContinuationToken", "")
            if not page.get("IsTruncated") or not token:
                return

    # ---- multipart ----------------------------------------------------------------------

    async def create_multipart_upload(self, key: str, metadata: Mapping[str, str]) -> str:
        client = await self._client()
        async with _translated(f"create upload {key}"):
            resp = await client.create_multipart_upload(**self._args(
                key, Metadata=dict(metadata), ContentType="application/octet-stream"))
        return resp["UploadId"]

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytes | bytearray) -> str:
        client = await self._client()
        async with _translated(f"upload part {number} of {key}"):
            resp = await client.upload_part(**self._args(key, UploadId=upload_id, PartNumber=number,
                                                         Body=body))
        return resp.get("ETag", "")

    async def upload_part_copy(self, key: str, upload_id: str, number: int, source: str,
                               source_etag: str) -> str:
        """Copy a whole object into a part, server-side, only if it still has `source_etag`."""
        client = await self._client()
        async with _translated(f"copy part {source}"):
            resp = await client.upload_part_copy(**self._args(
                key, UploadId=upload_id, PartNumber=number,
                CopySource={"Bucket": self.config.bucket, "Key": source}, CopySourceIfMatch=source_etag))
        return resp.get("CopyPartResult", {}).get("ETag", "")

    async def complete_multipart_upload(self, key: str, upload_id: str, etags: Sequence[str], *,
                                        if_none_match: bool = False) -> str:
        client = await self._client(retried=not if_none_match)
        parts = [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
        async with _translated(f"complete {key}"):
            resp = await client.complete_multipart_upload(**self._args(
                key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                IfNoneMatch="*" if if_none_match else None))
        return resp.get("ETag", "")

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        client = await self._client()
        try:
            async with _translated(f"abort {key}"):
                await client.abort_multipart_upload(**self._args(key, UploadId=upload_id))
        except NoSuchKey:
            pass

    async def create_bucket(self) -> None:
        """Create the bucket (for test fixtures and first start); an existing one of ours is fine."""
        client = await self._client()
        args: dict[str, Any] = {"Bucket": self.config.bucket}
        if self.config.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
        try:
            async with _translated(f"create bucket {self.config.bucket}"):
                await client.create_bucket(**args)
        except S3Error as e:
            if e.detail_code != "BucketAlreadyOwnedByYou":
                raise
