"""A registry outside the stack, serving one image, whose layer downloads stop after a
byte count the test sets until it says go: a pull that is deterministically mid-way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from tests.faults.oci import MANIFEST, Image


class Upstream:
    def __init__(self, repo: str, tag: str, image: Image, *, pause_at: int):
        self.repo = repo
        self.tag = tag
        self.image = image
        self.pause_at = pause_at
        self.paused = asyncio.Event()  # a download has sent `pause_at` bytes and waits
        self._go = asyncio.Event()
        self.addr = ""

    def release(self) -> None:
        """Every download from now on runs to the end."""
        self._go.set()

    async def _ping(self, _: web.Request) -> web.Response:
        return web.json_response({})

    async def _manifest(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        if request.match_info["name"] != self.repo or ref not in (self.tag, self.image.digest):
            raise web.HTTPNotFound()
        return web.Response(body=None if request.method == "HEAD" else self.image.manifest, headers={
            "Content-Type": MANIFEST, "Docker-Content-Digest": self.image.digest,
            "Content-Length": str(len(self.image.manifest))})

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        data = self.image.blobs.get(request.match_info["digest"])
        if request.match_info["name"] != self.repo or data is None:
            raise web.HTTPNotFound()
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Docker-Content-Digest": request.match_info["digest"]})
        resp.content_length = len(data)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        with contextlib.suppress(ConnectionError):  # the puller was killed: nobody reads on
            for off in range(0, len(data), 1 << 20):
                if off >= self.pause_at and len(data) > self.pause_at and not self._go.is_set():
                    self.paused.set()
                    await self._go.wait()
                await resp.write(data[off:off + (1 << 20)])
            await resp.write_eof()
        return resp

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator["Upstream"]:
        app = web.Application()
        app.router.add_get("/v2/", self._ping)
        app.router.add_get("/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self._blob)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.addr = "127.0.0.1:%d" % runner.addresses[0][1]
        try:
            yield self
        finally:
            self.release()
            await runner.cleanup()
