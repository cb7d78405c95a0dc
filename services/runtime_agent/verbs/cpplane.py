"""The agent's copy plane: `cp` bytes over HTTP on loopback, against grants the bus issued.

Bytes on the bus cross two hops (requester -> nats-server -> agent) in small messages;
here they cross one socket in a stream. A requester on the same loopback
(shared.locality) asks for a copy on the bus as before and gets a grant URL back
(services/runtime_agent/verbs/grants.py): GET it for the tar of a path, PUT a tar to
it. Anything else, or a grant forged, altered, expired or used before, is answered 403;
the listener binds 127.0.0.1 only and is never on another host's way. A requester
elsewhere (another host, another network namespace) keeps the bus stream: putting this
plane on a host address needs HTTPS with the node certificate (shared/tls.py) first.

Memory stays bounded as on the bus: a few CHUNKs queue between the socket and the tar
thread (streams.Produced / streams.Consumed), and aiohttp waits for the socket to drain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from services.runtime_agent.verbs import streams
from services.runtime_agent.verbs.grants import Grants
from shared import locality, tarcopy
from shared.errors import DockyardError, InvalidArgument, Unavailable
from shared.messages.agent import Container

log = logging.getLogger(__name__)

TAR = "application/x-tar"
_HOST = "127.0.0.1"


class CopyPlane:
    """The listener, and the grants it issues and redeems."""

    def __init__(self, find: Callable[[str], Container], root_of: Callable[[Container], Path]):
        self.find, self.root_of = find, root_of  # a container by id (NotFound), its mounted root
        self.grants = Grants()
        self.here = locality.here()
        self.base = ""  # http://127.0.0.1:PORT once listening
        self._runner: web.AppRunner | None = None

    def serves(self, plane: str) -> bool:
        """Whether a requester at `plane` (its shared.locality.here()) can reach us."""
        return bool(self.base and self.here and plane == self.here)

    def grant_out(self, container: str, path: str, follow: bool) -> str:
        return self.base + self.grants.issue("GET", container, {"path": path, "follow": _flag(follow)})

    def grant_in(self, container: str, dest: str, rename: tuple[str, str] | None, keep_owner: bool) -> str:
        old, new = rename or ("", "")
        return self.base + self.grants.issue("PUT", container, {"dest": dest, "from": old, "to": new,
                                                                 "owner": _flag(keep_owner)})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/containers/{id}/archive", self._get)
        app.router.add_put("/v1/containers/{id}/archive", self._put)
        # a copy under way when the agent stops gets what the bus's drain gets, not a minute
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, _HOST, 0)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            log.warning("no copy plane (cp stays on the bus): %s", e)
            return
        self.base = f"http://{_HOST}:{self._runner.addresses[0][1]}"
        log.info("copy plane on %s", self.base)

    async def close(self) -> None:
        self.base = ""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _redeem(self, request: web.Request, method: str):
        cid = request.match_info["id"]
        grant = self.grants.redeem(method, cid, request.path, dict(request.query))
        return grant, self.find(grant.container)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        """The tar of the grant's path: its first bytes (or its error) decide the status."""
        try:
            grant, c = self._redeem(request, "GET")
            root = str(await asyncio.to_thread(self.root_of, c))
            path, follow = grant.params["path"], grant.params["follow"] == "1"
            produced = streams.Produced(lambda f: tarcopy.write_tar(root, path, f, follow_last=follow))
        except DockyardError as e:
            return _error(e)
        try:
            data = await produced.next()
        except DockyardError as e:
            return _error(e)
        except Exception as e:  # noqa: BLE001 - an OSError of the walk, told to the requester
            return _error(Unavailable(f"reading {grant.params['path']}: {e}"))
        resp = web.StreamResponse(headers={"Content-Type": TAR})
        await resp.prepare(request)
        try:
            while data is not None:
                await resp.write(data)
                data = await produced.next()
            await resp.write_eof()
        except Exception as e:  # noqa: BLE001 - a short tar must not pass for a whole one
            log.warning("cp out of %s broke off: %s", c.id, e)
            if request.transport is not None:
                request.transport.abort()  # the requester sees a broken stream, not an end
        finally:
            await produced.close()
        return resp

    async def _put(self, request: web.Request) -> web.Response:
        """Extract the body (a tar) where the grant says; `{"written": N}`."""
        try:
            grant, c = self._redeem(request, "PUT")
            if c.config.flags.read_only:
                raise InvalidArgument("container rootfs is marked read-only")
            root = str(await asyncio.to_thread(self.root_of, c))
            p = grant.params
            rename = (p["from"], p["to"]) if p["from"] else None
            consumed = streams.Consumed(lambda f: tarcopy.extract(f, root, p["dest"], rename=rename,
                                                                   keep_owner=p["owner"] == "1"))
        except DockyardError as e:
            return _error(e)
        try:
            await _pump(request, consumed)
            written = await consumed.result()
        except DockyardError as e:
            return _error(e)
        except Exception as e:  # noqa: BLE001 - a write of the extraction failed (ENOSPC, ...)
            return _error(Unavailable(f"writing into {c.id[:12]}: {e}"))
        finally:
            await consumed.abort("the request body ended early")
        return web.json_response({"written": written})


async def _pump(request: web.Request, consumed: streams.Consumed) -> None:
    """The body into the consumer in CHUNKs (socket reads come in smaller pieces)."""
    buf = bytearray()
    async for piece in request.content.iter_any():
        if consumed.stopped:
            return  # it stopped reading: its result tells why (the rest is not read)
        buf += piece
        if len(buf) >= tarcopy.CHUNK:
            await consumed.feed(buf)  # handed over whole, not copied: a new one fills next
            buf = bytearray()
    if buf:
        await consumed.feed(buf)
    await consumed.feed(None)


def _error(e: DockyardError) -> web.Response:
    # close: a PUT's body may not have been read to its end
    return web.json_response({"code": e.code, "message": e.message}, status=e.http_status,
                             headers={"Connection": "close"})


def _flag(b: bool) -> str:
    return "1" if b else "0"

