"""A small OCI distribution client for the fault tests: every step visible, so that a test
can stop a push or a pull at a byte offset it chose, and every byte read back is verified."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from shared.registry.auth import RegistryAuth

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"  # uncompressed: a 50 MB layer costs no gzip time


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """An image held in memory: its manifest and every blob it names, by digest."""

    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def layers(self) -> list[str]:
        return [d["digest"] for d in json.loads(self.manifest)["layers"]]


def make_image(layers: list[bytes], *, env: list[str] | None = None) -> Image:
    """Uncompressed tar layers (diff_id == digest) under a linux/amd64 config."""
    digests = [sha256(raw) for raw in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"], "Env": env or ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": digests}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": d, "size": len(raw)} for d, raw in zip(digests, layers)],
    }).encode()
    return Image(manifest, {sha256(config): config, **dict(zip(digests, layers))})


class Paused:
    """A request body that sends `before` bytes, then waits for `release()` to send the rest.

    Its Content-Length is the whole size, as a real client's monolithic or chunked PUT says."""

    def __init__(self, data: bytes, before: int, piece: int = 1 << 20):
        self.data = data
        self.before = before
        self.piece = piece
        self._go = asyncio.Event()

    def release(self) -> None:
        self._go.set()

    async def body(self) -> AsyncIterator[bytes]:
        for off in range(0, len(self.data), self.piece):
            if off >= self.before:
                await self._go.wait()
            yield self.data[off:off + self.piece]


class Registry:
    """Push and pull against the stack's registry with the admin's credentials."""

    def __init__(self, http: aiohttp.ClientSession, addr: str, creds: tuple[str, str]):
        self.http = http
        self.base = f"http://{addr}"
        self.auth = RegistryAuth(http, addr, creds)

    async def headers(self, repo: str, **extra: str) -> dict[str, str]:
        scopes = [f"repository:{repo}:pull,push"]
        if (h := await self.auth.header(scopes)) is None:
            async with self.http.get(f"{self.base}/v2/") as r:
                if r.status == 401:
                    await self.auth.on_challenge(r.headers.get("WWW-Authenticate"), scopes)
            h = await self.auth.header(scopes)
        return {**({"Authorization": h} if h else {}), **extra}

    def resolve(self, location: str, against: URL | None = None) -> URL:
        """A Location header resolved against the URL that answered it (RFC 9110)."""
        return (against or URL(self.base)).join(URL(location))

    # ---- push ---------------------------------------------------------------------------

    async def start_upload(self, repo: str) -> URL:
        async with self.http.post(f"{self.base}/v2/{repo}/blobs/uploads/",
                                  headers=await self.headers(repo)) as r:
            assert r.status == 202, f"POST upload to {repo}: {r.status} {await r.text()}"
            return self.resolve(r.headers["Location"])

    async def patch(self, repo: str, loc: URL, data: bytes | Paused, offset: int) -> tuple[URL, int]:
        """Append a chunk at `offset`; the new Location and the size the session reports."""
        size = len(data.data) if isinstance(data, Paused) else len(data)
        headers = await self.headers(repo, **{"Content-Type": "application/octet-stream",
                                               "Content-Range": f"{offset}-{offset + size - 1}",
                                               "Content-Length": str(size)})
        body = data.body() if isinstance(data, Paused) else data
        async with self.http.patch(loc, data=body, headers=headers) as r:
            assert r.status == 202, f"PATCH {loc}: {r.status} {await r.text()}"
            return self.resolve(r.headers["Location"], loc), range_size(r.headers["Range"])

    async def upload_size(self, repo: str, loc: URL) -> int:
        """The bytes an upload session holds, from its `Range` (the OCI resume protocol)."""
        async with self.http.get(loc, headers=await self.headers(repo)) as r:
            assert r.status == 204, f"GET {loc}: {r.status} {await r.text()}"
            return range_size(r.headers["Range"])

    async def finish(self, repo: str, loc: URL, digest: str, data: bytes | Paused | None = None) -> None:
        headers = await self.headers(repo, **{"Content-Type": "application/octet-stream"})
        body = None
        if data is not None:
            headers["Content-Length"] = str(len(data.data) if isinstance(data, Paused) else len(data))
            body = data.body() if isinstance(data, Paused) else data
        async with self.http.put(loc.update_query(digest=digest), data=body, headers=headers) as r:
            assert r.status == 201, f"PUT {loc}: {r.status} {await r.text()}"

    async def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        await self.finish(repo, await self.start_upload(repo), digest, data)
        return digest

    async def put_manifest(self, repo: str, tag: str, body: bytes) -> None:
        async with self.http.put(f"{self.base}/v2/{repo}/manifests/{tag}", data=body,
                                 headers=await self.headers(repo, **{"Content-Type": MANIFEST})) as r:
            assert r.status == 201, f"PUT manifest {repo}:{tag}: {r.status} {await r.text()}"

    # ---- pull ---------------------------------------------------------------------------

    async def blob_status(self, repo: str, digest: str) -> int:
        async with self.http.head(f"{self.base}/v2/{repo}/blobs/{digest}",
                                  headers=await self.headers(repo)) as r:
            return r.status

    def open_blob(self, repo: str, digest: str, headers: dict[str, str]):
        return self.http.get(f"{self.base}/v2/{repo}/blobs/{digest}", headers=headers)

    async def get_blob(self, repo: str, digest: str) -> bytes:
        async with self.open_blob(repo, digest, await self.headers(repo)) as r:
            assert r.status == 200, f"GET blob {repo}@{digest}: {r.status} {await r.text()}"
            return await r.read()

    async def get_manifest(self, repo: str, ref: str) -> bytes:
        async with self.http.get(f"{self.base}/v2/{repo}/manifests/{ref}",
                                 headers=await self.headers(repo, Accept=MANIFEST)) as r:
            assert r.status == 200, f"GET manifest {repo}:{ref}: {r.status} {await r.text()}"
            return await r.read()

    async def verify(self, repo: str, tag: str, img: Image) -> None:
        """The tag names this image, and every byte of it reads back under its digest."""
        body = await self.get_manifest(repo, tag)
        assert sha256(body) == img.digest, f"{repo}:{tag} is {sha256(body)}, pushed {img.digest}"
        m = json.loads(body)
        for desc in [m["config"], *m["layers"]]:
            data = await self.get_blob(repo, desc["digest"])
            assert (sha256(data), len(data)) == (desc["digest"], desc["size"]), \
                f"{repo}@{desc['digest']} read back as {sha256(data)} ({len(data)} bytes)"


def range_size(header: str) -> int:
    """`0-<last>` -> bytes held (`0-0` is ambiguous in the spec; here it means none or one)."""
    last = int(header.split("-", 1)[1])
    return last + 1 if last > 0 else 0
