"""cp (both ways, tar streams, safe paths), diff and export (issue 11) on real agents, on two agents."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_agent_fleet import REPO_ROOT, running_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

GiB = 1 << 30


@pytest.fixture(scope="module")
def fleet(nats_url, tmp_path_factory):
    with running_fleet(tmp_path_factory.mktemp("files"), nats_url, {1: 2 * GiB, 2: 4 * GiB}) as f:
        yield f


def _cli_bytes(fleet, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=fleet.env, cwd=REPO_ROOT,
                       input=input, capture_output=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"dockyard {' '.join(args)} exited {p.returncode}: {p.stderr.decode()}")
    return p


def _tree(root: Path) -> dict[str, tuple]:
    """path -> (kind, mode, sha256 or link target) of everything under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("l", 0, os.readlink(p))
        elif p.is_dir():
            out[rel] = ("d", st.st_mode & 0o7777, "")
        else:
            out[rel] = ("f", st.st_mode & 0o7777, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _sample_dir(root: Path) -> Path:
    d = root / f"sample-{uuid.uuid4().hex[:6]}"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several chunks, not a multiple
    (d / "big.bin").chmod(0o751)
    (d / "sub" / "setuid").write_bytes(b"#!/bin/sh\necho hi\n")
    (d / "sub" / "setuid").chmod(0o4755)
    (d / "sub" / "deeper" / "empty").touch()
    (d / "sub" / "deeper" / "empty").chmod(0o600)
    (d / "sub").chmod(0o750)
    os.symlink("sub/setuid", d / "link")
    return d


@pytest.fixture
def via(request, fleet):
    """How cp's bytes travel: the agent's copy plane (its loopback is ours), or the bus (what
    a CLI on another host gets)."""
    if request.param == "bus":
        fleet.env["DOCKYARD_CP_VIA"] = "bus"
    try:
        yield request.param
    finally:
        fleet.env.pop("DOCKYARD_CP_VIA", None)


@pytest.mark.parametrize(("where", "via"), [("placed", "plane"), ("other", "plane"), ("placed", "bus")],
                         indirect=["via"])
def test_cp_a_tree_in_and_out_keeps_bytes_and_modes(fleet, where, via, tmp_path):
    host = ["--host", fleet.agents[0].id] if where == "other" else []
    name = f"cp-{where}-{via}"
    fleet.cli("run", "-d", "--name", name, *host, "--network", "none", "busybox", "sleep", "600")
    src = _sample_dir(tmp_path)
    p = fleet.cli("cp", str(src), f"{name}:/tmp")
    assert "Successfully copied" in p.stderr
    out = tmp_path / "back"
    fleet.cli("cp", f"{name}:/tmp/{src.name}", str(out))  # a new name: the tree is renamed to it
    assert _tree(out) == _tree(src)
    # into an existing directory: the tree goes inside it, under its own name
    fleet.cli("cp", f"{name}:/tmp/{src.name}", str(tmp_path))
    assert _tree(tmp_path / src.name) == _tree(src)

    # one file to a new name inside, then out as a tar stream on stdout
    fleet.cli("cp", str(src / "big.bin"), f"{name}:/root/renamed.bin")
    tar = _cli_bytes(fleet, "cp", f"{name}:/root/renamed.bin", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        (m,) = tf.getmembers()
        assert (m.name, m.mode, m.uid) == ("renamed.bin", 0o751, 0)
        assert tf.extractfile(m).read() == (src / "big.bin").read_bytes()
    # a tar stream from stdin, owners kept with -a
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("from-stdin/owned")
        info.size, info.mode, info.uid, info.gid = 5, 0o640, 1234, 4321
        tf.addfile(info, io.BytesIO(b"owned"))
    _cli_bytes(fleet, "cp", "-a", "-", f"{name}:/", input=buf.getvalue())
    tar = _cli_bytes(fleet, "cp", f"{name}:/from-stdin/owned", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        (m,) = tf.getmembers()
        assert (m.mode, m.uid, m.gid, tf.extractfile(m).read()) == (0o640, 1234, 4321, b"owned")
    p = fleet.cli("cp", f"{name}:/no/such/file", str(tmp_path / "x"), check=False)
    assert p.returncode != 0 and "no such" in p.stderr.lower()
    fleet.cli("rm", "-f", name)


def test_cp_cannot_escape_the_container_root_through_its_symlinks(fleet, tmp_path):
    tag = uuid.uuid4().hex[:8]
    # /etc itself holds the runtime's bind mounts (hosts, resolv.conf): /var plays its part
    fleet.cli("run", "-d", "--name", "escaper", "--network", "none", "busybox", "sh", "-c",
              "rm -rf /var && ln -s / /var && ln -s ../../../../.. /up && touch /ready && sleep 600")
    deadline = time.monotonic() + 20
    while (p := _cli_bytes(fleet, "cp", "escaper:/ready", "-", check=False)).returncode != 0:
        assert time.monotonic() < deadline, (p.stderr, fleet.cli("logs", "escaper").stderr)
        time.sleep(0.1)
    f = tmp_path / f"escaped-{tag}"
    f.write_bytes(b"inside")
    fleet.cli("cp", str(f), "escaper:/var/")  # /var -> /: lands in the container's /
    fleet.cli("cp", str(f), f"escaper:/up/up/tmp/{f.name}")  # .. stops at the container's root
    assert not Path(f"/{f.name}").exists() and not Path(f"/tmp/{f.name}").exists()
    for inside in (f"/{f.name}", f"/tmp/{f.name}"):
        tar = _cli_bytes(fleet, "cp", f"escaper:{inside}", "-").stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            assert tf.extractfile(tf.getmembers()[0]).read() == b"inside"
    # reading through the links finds the container's files, never the host's
    p = _cli_bytes(fleet, "cp", "escaper:/up/etc/shadow", "-", check=False)
    assert p.returncode != 0 and Path("/etc/shadow").exists()
    tar = _cli_bytes(fleet, "cp", "escaper:/var", "-").stdout  # without -L: the link itself
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        (m,) = tf.getmembers()
        assert m.issym() and m.linkname == "/"
    tar = _cli_bytes(fleet, "cp", "-L", "escaper:/up", "-").stdout  # -L: the container's / it names
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        assert "up/bin/busybox" in tf.getnames() and "up/proc/1" not in tf.getnames()
    # a hostile tar: a link to / and a file through it, and an entry climbing out
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        link = tarfile.TarInfo("hop")
        link.type, link.linkname = tarfile.SYMTYPE, "/"
        tf.addfile(link)
        info = tarfile.TarInfo(f"hop/tmp/hostile-{tag}")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    _cli_bytes(fleet, "cp", "-", "escaper:/root", input=buf.getvalue())
    assert not Path(f"/tmp/hostile-{tag}").exists()
    assert _cli_bytes(fleet, "cp", f"escaper:/tmp/hostile-{tag}", "-").returncode == 0  # inside it
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(f"../../../../tmp/climb-{tag}")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    p = _cli_bytes(fleet, "cp", "-", "escaper:/root", input=buf.getvalue(), check=False)
    assert p.returncode != 0 and b"climbs out" in p.stderr
    assert not Path(f"/tmp/climb-{tag}").exists()
    fleet.cli("rm", "-f", "escaper")


def test_diff_and_export_against_the_image(fleet, tmp_path):
    other = fleet.agents[0].id
    fleet.cli("run", "--name", "changed", "--host", other, "--network", "none", "busybox", "sh", "-c",
              "echo new > /added && mkdir -p /var/www/site && echo hi > /var/www/site/index.html && "
              "echo extra >> /etc/passwd && rm /bin/ls")
    lines = fleet.cli("diff", "changed").stdout.splitlines()
    assert lines == ["A /added", "C /bin", "D /bin/ls", "C /etc", "C /etc/passwd", "C /var", "C /var/www",
                     "A /var/www/site", "A /var/www/site/index.html"], lines
    out = tmp_path / "changed.tar"
    fleet.cli("export", "-o", str(out), "changed")
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
        assert {"bin/busybox", "added", "var/www/site/index.html", "etc/passwd"} <= names
        assert "bin/ls" not in names
        assert tf.extractfile("etc/passwd").read().endswith(b"extra\n")
        plane = {m.name: (m.mode, m.size) for m in tf.getmembers()}
    fleet.env["DOCKYARD_CP_VIA"] = "bus"  # the same tar on the bus
    try:
        fleet.cli("export", "-o", str(tmp_path / "bus.tar"), "changed")
    finally:
        fleet.env.pop("DOCKYARD_CP_VIA")
    with tarfile.open(tmp_path / "bus.tar") as tf:
        assert {m.name: (m.mode, m.size) for m in tf.getmembers()} == plane
    fleet.cli("rm", "changed")


def test_commit_makes_an_image_that_runs_on_another_agent(fleet):
    import json
    import urllib.request
    placed, other = fleet.agents[1].id, fleet.agents[0].id
    fleet.cli("run", "-d", "--name", "tocommit", "--host", placed, "--network", "none", "busybox", "sh", "-c",
              "echo committed-bytes > /hello && rm /bin/ls && sleep 600")
    deadline = time.monotonic() + 20
    while _cli_bytes(fleet, "cp", "tocommit:/hello", "-", check=False).returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    digest = fleet.cli("commit", "-m", "a message", "-a", "tester", "-c", 'CMD ["cat", "/hello"]',
                       "-c", "ENV FLAVOUR=mint", "-c", "LABEL tier=web", "tocommit", "committed:v1").stdout.strip()
    assert digest.startswith("sha256:") and len(digest) == 71
    assert fleet.inspect("tocommit")["State"]["Status"] == "running"  # frozen only while it was written

    def get(path: str, accept: str = "application/vnd.oci.image.manifest.v1+json") -> bytes:
        req = urllib.request.Request(f"http://{fleet.registry}/v2/library/committed/{path}", headers={"Accept": accept})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    manifest = json.loads(get("manifests/v1"))
    assert hashlib.sha256(get("manifests/v1")).hexdigest() == digest.split(":")[1]
    config = json.loads(get(f"blobs/{manifest['config']['digest']}"))
    assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"]) == 2  # busybox's + the container's
    assert config["config"]["Cmd"] == ["cat", "/hello"] and "FLAVOUR=mint" in config["config"]["Env"]
    assert config["config"]["Labels"] == {"tier": "web"} and config["author"] == "tester"
    assert config["history"][-1]["comment"] == "a message"

    p = fleet.cli("run", "--rm", "--host", other, "--network", "none", "committed:v1")
    assert p.stdout == "committed-bytes\n"
    p = fleet.cli("run", "--rm", "--host", other, "--network", "none", "committed:v1", "ls", check=False)
    assert p.returncode != 0  # the deletion is in the image too (a whiteout)
    p = fleet.cli("commit", "-c", "RUN rm -rf /", "tocommit", "committed:v2", check=False)
    assert p.returncode != 0 and "RUN is not one of" in p.stderr
    fleet.cli("rm", "-f", "tocommit")


def _kib(pid: int, field: str) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith(field + ":"):
            return int(ln.split()[1])
    raise AssertionError(field)


def test_cp_of_100_mb_each_way_in_bounded_memory(fleet, tmp_path):
    agent = fleet.agents[0]
    fleet.cli("run", "-d", "--name", "bulk", "--host", agent.id, "--network", "none", "busybox", "sleep", "600")
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    pid = agent.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the agent's peak RSS starts again from now
    base = _kib(pid, "VmRSS")

    def cli_peak_kib(*args: str) -> int:
        p = subprocess.Popen([sys.executable, "-m", "services.cli.main", *args], env=fleet.env, cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # VmHWM of the CLI's own memory, read while it runs: wait4's ru_maxrss would also
        # count the forking pytest worker's RSS (Linux keeps the old mm's peak across exec).
        peak = 0
        while True:
            with contextlib.suppress(OSError, AssertionError):
                peak = max(peak, _kib(p.pid, "VmHWM"))
            done, status = os.waitpid(p.pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(status) == 0, p.stderr.read()
        assert peak > 0, "the CLI ended before its memory could be read"
        return peak

    cli_in = cli_peak_kib("cp", str(src), "bulk:/root/big.bin")
    cli_out = cli_peak_kib("cp", "bulk:/root/big.bin", str(tmp_path / "back.bin"))
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    grew = (_kib(pid, "VmHWM") - base) * 1024
    assert grew < 64 << 20, f"the agent's peak RSS grew by {grew >> 20} MiB for a 100 MiB copy"
    for peak in (cli_in, cli_out):  # a Python CLI with its imports is ~50 MiB; the file is 100
        assert peak * 1024 < 100 << 20, f"the CLI peaked at {peak >> 10} MiB"
    fleet.cli("rm", "-f", "bulk")


async def test_the_copy_plane_answers_only_the_grant_the_bus_issued(fleet, nc, tmp_path):
    """A grant comes only from a cp request the bus let through; forged, altered, replayed
    or aimed at another container, the plane refuses it and writes nothing."""
    import urllib.error
    import urllib.request
    from urllib.parse import parse_qsl, urlencode, urlsplit

    from shared import bus, locality, subjects
    from shared.messages.verbs import VERB_CP_TO, CopyToReply, CopyToRequest
    agent = fleet.agents[1]
    for name in ("granted", "bystander"):
        fleet.cli("run", "-d", "--name", name, "--host", agent.id, "--network", "none", "busybox", "sleep", "600")
    ids = {n: fleet.inspect(n)["Id"] for n in ("granted", "bystander")}
    client = bus.BusClient(nc)
    reply = await client.request(subjects.agent(agent.id, VERB_CP_TO),
                                 CopyToRequest(container=ids["granted"], path="/tmp", plane=locality.here()),
                                 CopyToReply)
    assert reply.url.startswith("http://127.0.0.1:") and ids["granted"] in reply.url and reply.written == 0
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("planted")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    body = buf.getvalue()

    def put(url: str) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body, method="PUT"), timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    u = urlsplit(reply.url)
    query = dict(parse_qsl(u.query))
    base = f"{u.scheme}://{u.netloc}"
    for why, url in {
        "no grant": f"{base}{u.path}",
        "forged": f"{base}{u.path}?{urlencode({**query, 'sig': 'ab' * 32})}",
        "another destination": f"{base}{u.path}?{urlencode({**query, 'dest': '/etc'})}",
        "another container": reply.url.replace(ids["granted"], ids["bystander"]),
    }.items():
        assert put(url) == 403, why
    for name in ("granted", "bystander"):
        p = _cli_bytes(fleet, "exec", name, "ls", "/tmp", "/etc", check=False)
        assert b"planted" not in p.stdout, name
    assert put(reply.url) == 200  # the grant as issued: once
    assert put(reply.url) == 403  # and never again
    tar = _cli_bytes(fleet, "cp", "granted:/tmp/planted", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        assert tf.extractfile("planted").read() == b"bad"
    fleet.cli("rm", "-f", "granted", "bystander")


async def test_an_older_cli_still_gets_json_chunks_on_the_bus(fleet, nc):
    """A requester that does not say it reads raw chunks (an older CLI, mid-upgrade) gets the
    JSON Chunks it knows, and its JSON answers to ChunkWant are read."""
    import asyncio

    from shared import bus, codec, subjects
    from shared.messages.verbs import (VERB_CP_FROM, VERB_CP_TO, Chunk, ChunkAck, ChunkWant, CopyFromReply,
                                       CopyFromRequest, CopyToReply, CopyToRequest)
    agent = fleet.agents[1]
    fleet.cli("run", "-d", "--name", "legacy", "--host", agent.id, "--network", "none", "busybox", "sleep", "600")
    cid = fleet.inspect("legacy")["Id"]
    client = bus.BusClient(nc)
    payload = os.urandom(600 * 1024)  # two chunks
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("old.bin")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    tar, sent = buf.getvalue(), 0

    async def answer(msg) -> None:  # what an older CLI's cp-to does: JSON Chunks
        nonlocal sent
        want = codec.decode(msg.data, ChunkWant)
        piece = tar[sent:sent + (512 << 10)]
        sent += len(piece)
        await msg.respond(codec.encode(Chunk(seq=want.seq, data=piece, end=not piece)))

    sub = await nc.subscribe(inbox := nc.new_inbox(), cb=answer)
    r = await client.request(subjects.agent(agent.id, VERB_CP_TO),
                             CopyToRequest(container=cid, path="/tmp", stream_inbox=inbox), CopyToReply, timeout=30)
    await sub.unsubscribe()
    assert (r.url, r.written) == ("", len(payload))

    got, done = [], asyncio.get_running_loop().create_future()

    async def take(msg) -> None:  # and its cp-from: JSON Chunks only, acked
        c = codec.decode(msg.data, Chunk)
        got.append(c.data)
        await msg.respond(codec.encode(ChunkAck(seq=c.seq)))
        if c.end and not done.done():
            done.set_result(c.error)

    sub = await nc.subscribe(inbox := nc.new_inbox(), cb=take)
    r = await client.request(subjects.agent(agent.id, VERB_CP_FROM),
                             CopyFromRequest(container=cid, path="/tmp/old.bin", stream_inbox=inbox),
                             CopyFromReply, timeout=30)
    assert r.url == "" and await asyncio.wait_for(done, 10) == ""
    await sub.unsubscribe()
    with tarfile.open(fileobj=io.BytesIO(b"".join(got))) as tf:
        assert tf.extractfile("old.bin").read() == payload
    fleet.cli("rm", "-f", "legacy")
