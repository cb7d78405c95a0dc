"""The agent's copy plane (services/runtime_agent/verbs/cpplane.py) over real HTTP on loopback,
driven by the CLI's client (services/cli/copy_plane.py): bytes exact both ways, and every
request without a grant this plane issued (missing, forged, altered, another container's,
expired, replayed) refused with 403 and nothing written."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from services.cli import copy_plane
from services.runtime_agent.verbs.cpplane import CopyPlane
from services.runtime_agent.verbs.grants import Grants
from shared import locality, tarcopy
from shared.errors import InvalidArgument, NotFound, PermissionDenied
from shared.messages.agent import Container, ContainerConfig

CID = "c" * 64
OTHER = "d" * 64


@pytest.fixture
async def plane(tmp_path):
    roots = {CID: tmp_path / "root", OTHER: tmp_path / "other"}
    for r in roots.values():
        (r / "tmp").mkdir(parents=True)

    def find(cid: str) -> Container:
        if cid not in roots:
            raise NotFound(f"no such container: {cid}")
        return Container(id=cid, name=cid[:4], host="here", created="", config=ContainerConfig(image="busybox"))

    p = CopyPlane(find, lambda c: roots[c.id])
    await p.start()
    p.roots = roots
    try:
        yield p
    finally:
        await p.close()


def _tar(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o640
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _put_raw(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


async def test_a_tree_goes_in_and_comes_out_byte_exact(plane, tmp_path):
    assert plane.serves(locality.here()) and not plane.serves("") and not plane.serves("other-boot:1")
    src = tmp_path / "src" / "tree"
    (src / "sub").mkdir(parents=True)
    big = os.urandom(3 * tarcopy.CHUNK + 17)  # several chunks, not a multiple of one
    (src / "big.bin").write_bytes(big)
    (src / "sub" / "x").write_bytes(b"x" * 10)
    os.chmod(src / "big.bin", 0o751)
    url = plane.grant_in(CID, "/tmp", None, False)
    written = await asyncio.to_thread(copy_plane.put, url, lambda f: tarcopy.write_tar(str(src.parent), "/tree", f))
    assert written == len(big) + 10
    got = plane.roots[CID] / "tmp" / "tree"
    assert (got / "big.bin").read_bytes() == big and os.stat(got / "big.bin").st_mode & 0o777 == 0o751

    # out again, renamed on the way as docker does for a new destination name
    out = tmp_path / "back"
    out.mkdir()
    url = plane.grant_out(CID, "/tmp/tree", False)
    n = await asyncio.to_thread(copy_plane.get, url, lambda f: tarcopy.extract(f, str(out), "/", rename=("tree", "t2")))
    assert n == len(big) + 10
    assert hashlib.sha256((out / "t2" / "big.bin").read_bytes()).digest() == hashlib.sha256(big).digest()
    assert (out / "t2" / "sub" / "x").read_bytes() == b"x" * 10


async def test_a_raw_tar_stream_both_ways(plane):
    tar = _tar({"a/one": b"1" * 1000, "a/two": os.urandom(tarcopy.CHUNK * 2)})
    url = plane.grant_in(CID, "/", None, True)
    await asyncio.to_thread(copy_plane.put, url, lambda f: f.write(tar))
    url = plane.grant_out(CID, "/a", False)
    back = await asyncio.to_thread(copy_plane.get, url, lambda f: f.read())
    with tarfile.open(fileobj=io.BytesIO(back)) as tf:
        assert tf.extractfile("a/two").read() == tarfile.open(fileobj=io.BytesIO(tar)).extractfile("a/two").read()
        assert tf.getmember("a/one").mode == 0o640


def _with(url: str, **changes: str) -> str:
    u = urlsplit(url)
    q = dict(parse_qsl(u.query))
    q.update(changes)
    return f"{u.scheme}://{u.netloc}{u.path}?{urlencode(q)}"


async def test_requests_without_a_grant_of_this_plane_are_refused(plane):
    tar = _tar({"pwned": b"bad"})
    good = plane.grant_in(CID, "/tmp", None, False)
    u = urlsplit(good)
    other_key = Grants().issue("PUT", CID, {"dest": "/tmp", "from": "", "to": "", "owner": "0"})
    refused = {
        "no grant": f"{plane.base}{u.path}",
        "forged signature": _with(good, sig="0" * 64),
        "another agent's key": plane.base + other_key,
        "altered destination": _with(good, dest="/"),
        "altered owner flag": _with(good, owner="1"),
        "another container": good.replace(CID, OTHER),
        "malformed expiry": _with(good, exp="soon"),
    }
    for why, url in refused.items():
        assert await asyncio.to_thread(_put_raw, url, tar) == 403, why
    # the method is signed too: a PUT grant does not read
    with pytest.raises(urllib.error.HTTPError) as e:
        await asyncio.to_thread(urllib.request.urlopen, good, None, 10)
    assert e.value.code == 403
    assert _files(plane.roots[CID]) == {"tmp"} and _files(plane.roots[OTHER]) == {"tmp"}

    # the grant itself works once, and only once
    assert await asyncio.to_thread(_put_raw, good, tar) == 200
    assert (plane.roots[CID] / "tmp" / "pwned").read_bytes() == b"bad"
    (plane.roots[CID] / "tmp" / "pwned").unlink()
    with pytest.raises(PermissionDenied, match="used already"):
        await asyncio.to_thread(copy_plane.put, good, lambda f: f.write(tar))
    assert not (plane.roots[CID] / "tmp" / "pwned").exists()

    plane.grants = Grants(ttl=-1)  # every grant it issues is already out of date
    with pytest.raises(PermissionDenied, match="expired"):
        await asyncio.to_thread(copy_plane.get, plane.grant_out(CID, "/tmp", False), lambda f: f.read())


async def test_the_agents_errors_come_back_as_theirs(plane):
    climbing = _tar({"../../../../escape": b"bad"})
    with pytest.raises(InvalidArgument, match="climbs out"):
        await asyncio.to_thread(copy_plane.put, plane.grant_in(CID, "/tmp", None, False), lambda f: f.write(climbing))
    with pytest.raises(InvalidArgument, match="not a tar"):
        await asyncio.to_thread(copy_plane.put, plane.grant_in(CID, "/tmp", None, False),
                                lambda f: f.write(os.urandom(tarcopy.CHUNK * 3)))
    with pytest.raises(NotFound, match="no such file"):
        await asyncio.to_thread(copy_plane.get, plane.grant_out(CID, "/tmp/nothing", False), lambda f: f.read())
    assert _files(plane.roots[CID]) == {"tmp"} and not Path("/escape").exists()


async def test_a_stream_ended_early_frees_its_consumer_even_with_a_full_queue():
    """The plane's PUT (and the bus's receive) abort a consumer that still waits for bytes;
    with QUEUE chunks waiting, the end must still reach it, not leave its thread blocked."""
    import threading

    from services.runtime_agent.verbs import streams
    from shared.errors import Unavailable
    gate = threading.Event()

    def reader(f) -> None:
        gate.wait(10)  # busy (a slow disk) while the queue fills
        while f.read(1024):
            pass

    consumed = streams.Consumed(reader)
    for _ in range(streams.QUEUE):
        await consumed.feed(b"x" * 1024)
    assert consumed.q.full()
    asyncio.get_running_loop().call_later(0.2, gate.set)
    await asyncio.wait_for(consumed.abort("the body ended early"), 5)
    assert consumed.stopped
    with pytest.raises(Unavailable, match="ended early"):
        await consumed.result()
