"""What the kill -9 tests check after each kill, and the test images they push."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import socket
import tarfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import nats.js.errors
import pytest

from examples.busybox import busybox_rootfs, tar_dir
from shared import bus, subjects
from shared.errors import NotFound
from shared.messages.common import Empty
from shared.messages.layer_store import StatReply, StatRequest, UploadListReply
from tests.faults import procs
from tests.faults.oci import Image, Registry, make_image, sha256

WAIT = 30.0


async def until(what: str, probe: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        await asyncio.sleep(0.02)


def tar_file(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Images:
    """The test images (busybox base plus one layer each) and those acknowledged so far."""

    def __init__(self, work: Path):
        self.base = tar_dir(busybox_rootfs(work / "rootfs"))
        self.acked: dict[str, Image] = {}  # "repo:tag" -> image whose push was acknowledged

    def with_layer(self, name: str, data: bytes) -> Image:
        return make_image([self.base, tar_file(name, data)], env=["PATH=/bin", f"FAULTS={name}"])

    async def push(self, reg: Registry, repo: str, tag: str, img: Image, *, have: set[str] = frozenset()) -> None:
        """Push the blobs not in `have` (already in the repository), then the manifest."""
        for digest, data in img.blobs.items():
            if digest not in have:
                await reg.push_blob(repo, data)
        await reg.put_manifest(repo, tag, img.manifest)
        self.acked[f"{repo}:{tag}"] = img

    async def verify_acked(self, reg: Registry) -> None:
        for ref, img in self.acked.items():
            repo, tag = ref.rsplit(":", 1)
            await reg.verify(repo, tag, img)


def inspect(stack, name: str) -> dict:
    return json.loads(stack.cli("inspect", name).stdout)[0]


class Survivor:
    """A container started before any kill, serving on a published port: every test checks
    at its end that it still runs, whatever was killed."""

    def __init__(self, stack, name: str):
        self.name = name
        info = inspect(stack, name)
        assert info["State"]["Running"], info
        self.pid = info["State"]["Pid"]
        self.url = f"http://127.0.0.1:{info['NetworkSettings']['Ports'][0]['host_port']}/passwd"

    async def assert_runs(self, stack, http: aiohttp.ClientSession) -> None:
        info = inspect(stack, self.name)
        assert info["State"]["Running"] and info["State"]["Pid"] == self.pid, info
        assert procs.alive(self.pid)
        async with http.get(self.url) as r:
            assert r.status == 200 and (await r.read()).startswith(b"root:x:0:0")


def small_receive_buffer(addr_info) -> socket.socket:
    """A client socket whose receive window stays small (no autotuning), so that a server
    killed mid-response cannot have sent all of a big blob already."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
    return sock


def blob_file(stack, digest: str) -> Path:
    hex_ = digest.removeprefix("sha256:")
    return stack.data_dir / "layer-store" / "blobs" / "sha256" / hex_[:2] / hex_


def assert_every_stored_blob_verifies(stack) -> None:
    """No file under the layer-store's blobs/ holds other bytes than its name says."""
    root = stack.data_dir / "layer-store" / "blobs" / "sha256"
    for path in root.glob("*/*"):
        if len(path.name) == 64:
            assert sha256(path.read_bytes()) == "sha256:" + path.name, f"{path} does not verify"


async def assert_nothing_lost(stack, reg: Registry, images: Images, survivor: Survivor) -> None:
    """What no kill may break: the stored blobs verify, every acknowledged image reads back
    and verifies, the container started before the kills still runs."""
    assert_every_stored_blob_verifies(stack)
    await images.verify_acked(reg)
    await survivor.assert_runs(stack, reg.http)


async def assert_not_served(stack, reg: Registry, client, repo: str, digest: str) -> None:
    """A blob whose upload never completed: not on disk, not over HTTP, not over the bus."""
    assert not blob_file(stack, digest).exists(), f"{digest} was stored from a partial upload"
    assert await reg.blob_status(repo, digest) == 404
    with pytest.raises(NotFound):
        await client.request(subjects.BLOB_STAT, StatRequest(digest=digest), StatReply)


async def uploads(client) -> dict[str, int]:
    """The layer-store's upload sessions: id -> bytes held."""
    listing = await client.request(subjects.UPLOAD_LIST, Empty(), UploadListReply)
    return {u.id: u.size for u in listing.uploads}


def upload_id(loc) -> str:
    return loc.path.rstrip("/").rsplit("/", 1)[1]


# An entry of a bucket with a TTL that is this close to its end may be gone by design
# (a dead builder's lease, a stopped agent's heartbeat) before a check reads it again.
EXPIRY_MARGIN = 60.0


async def kv_state(stack) -> dict[str, dict[str, bytes]]:
    """Every JetStream KV bucket: key -> value, less entries about to expire by their TTL."""
    nc = await bus.connect(stack.nats_url, name="faults-kv")
    try:
        js = nc.jetstream()
        out: dict[str, dict[str, bytes]] = {}
        now = datetime.datetime.now(datetime.timezone.utc)
        for info in await js.streams_info():
            if not info.config.name.startswith("KV_"):
                continue
            bucket = info.config.name.removeprefix("KV_")
            kv = await js.key_value(bucket)
            try:
                keys = await kv.keys()
            except nats.js.errors.NoKeysError:
                keys = []
            out[bucket] = {}
            for k in keys:
                if info.config.max_age:
                    last = await js.get_last_msg(info.config.name, f"$KV.{bucket}.{k}")
                    age = (now - last.time).total_seconds()
                    if age > info.config.max_age - EXPIRY_MARGIN:
                        continue
                out[bucket][k] = (await kv.get(k)).value
        return out
    finally:
        await nc.close()


async def all_services_answer(stack) -> bool:
    nc = await bus.connect(stack.nats_url, name="faults-ping")
    try:
        for name in json.loads((stack.data_dir / "stack.json").read_text())["services"]:
            await nc.request(f"$SRV.PING.{name}", b"", timeout=0.5)
        return True
    except Exception:
        return False
    finally:
        await nc.close()
