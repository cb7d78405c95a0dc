"""Progress of the real CLI on stderr: bars on a terminal (a pty), plain lines on a pipe,
JSON lines with --json, nothing with -q; stdout keeps only the result."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import skopeo
from tests.support.images import busybox_rootfs, oci_layout, skopeo_env, tar_dir
from tests.unit.registry_client.conftest import CncfRegistry

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def far(tmp_path_factory):
    r = CncfRegistry(tmp_path_factory.mktemp("dypg-far"))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def image(stack, tmp_path_factory):
    """An image of two random layers in the stack registry."""
    tmp = tmp_path_factory.mktemp("dypg-img")
    layers = []
    for i in range(2):
        root = tmp / f"root{i}"
        root.mkdir()
        (root / f"data{i}.bin").write_bytes(os.urandom(300 << 10))
        layers.append(tar_dir(root))
    oci_layout(tmp / "layout", layers)
    skopeo("copy", "--dest-tls-verify=false", f"--dest-creds={stack.admin_creds}", f"oci:{tmp / 'layout'}:latest",
           f"docker://{stack.registry_addr}/dypg/app:1", env=skopeo_env(tmp / "home"))
    return "dypg/app:1"


def on_a_pty(stack, *args: str, timeout: float = 300, raw: bool = False) -> tuple[int, str | bytes, str]:
    """`dockyard ARGS` with stderr on a terminal (a pty of 120 columns): (code, stdout, terminal);
    `raw`: stdout as bytes (an archive)."""
    master, slave = pty.openpty()
    # stdout to a file: a pipe nobody reads before the terminal ends would fill, and stop the CLI
    stdout = tempfile.TemporaryFile()
    try:
        p = subprocess.Popen([sys.executable, "-m", "services.cli.main", *args], stdout=stdout,
                             stderr=slave, stdin=subprocess.DEVNULL, env={**stack.env, "COLUMNS": "120"})
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has exited
                break
            if not data:
                break
            chunks.append(data)
        p.wait(timeout=timeout)
        stdout.seek(0)
        out = stdout.read()
        return p.returncode, out if raw else out.decode(), b"".join(chunks).decode(errors="replace")
    finally:
        stdout.close()
        os.close(master)
        if slave >= 0:
            os.close(slave)


def fresh_target(stack, far, image) -> str:
    """A repository of the far registry that has nothing yet, and the stack's name for it."""
    path = f"dypg/to-{uuid.uuid4().hex[:8]}:1"
    stack.cli("tag", image, path)  # within the stack: no copy
    return f"{far.addr}/{path}"


def test_push_draws_bars_on_a_terminal(stack, far, image):
    code, out, term = on_a_pty(stack, "push", fresh_target(stack, far, image))
    assert code == 0, term
    plain = ANSI.sub("", term)
    assert "\x1b[" in term and "━" in term, term  # drawn: cursor movement, colour, bars
    assert plain.count("Pushed") >= 2, plain  # two layers (the config too)
    assert "digest: sha256:" in out and "\x1b" not in out


def test_pull_draws_bars_on_a_terminal(stack, far, image):
    target = fresh_target(stack, far, image)
    stack.cli("push", target)
    stack.cli("rmi", target.split("/", 1)[1])  # the stack keeps a pulled image under its path
    code, out, term = on_a_pty(stack, "pull", target)
    assert code == 0, term
    plain = ANSI.sub("", term)
    assert "━" in term and plain.count("Pull complete") + plain.count("Already exists") >= 3, plain
    assert out.strip().endswith(target)


def test_push_plain_lines_on_a_pipe_json_lines_and_quiet(stack, far, image):
    for args in ([], ["--progress", "plain"]):
        p = stack.cli("push", *args, fresh_target(stack, far, image))
        lines = p.stderr.splitlines()
        assert "\x1b" not in p.stderr and any(re.fullmatch(r"[0-9a-f]{12}: Pushed \S+", ln) for ln in lines), p.stderr
        assert all(re.fullmatch(r"[0-9a-f]{12}: (Already exists|Pushing|Pushed \S+|Mounted)", ln) for ln in lines), \
            p.stderr
        assert "digest: sha256:" in p.stdout
    p = stack.cli("--json", "push", fresh_target(stack, far, image))
    events = [json.loads(ln) for ln in p.stderr.splitlines()]
    assert events and all(e["event"] == "transfer" for e in events), p.stderr
    assert {e["status"] for e in events} >= {"done"}
    assert json.loads(p.stdout)["digest"].startswith("sha256:")
    p = stack.cli("push", "-q", fresh_target(stack, far, image))
    assert p.stderr == "" and "digest: sha256:" in p.stdout


def test_build_steps_on_a_pipe_and_on_a_terminal(stack, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text(uuid.uuid4().hex)
    (ctx / "b.txt").write_text(uuid.uuid4().hex)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\n")
    p = stack.cli("build", "-t", "dypg/built:1", str(ctx), timeout=300)
    lines = p.stderr.splitlines()
    assert lines[0] == "#1 [1/3] FROM scratch", p.stderr
    assert re.fullmatch(r"#2 \[2/3\] .*COPY a\.txt /a\.txt", lines[2]) and re.fullmatch(r"#2 DONE \d+\.\ds", lines[3])
    assert "CACHED" not in p.stderr
    code, out, term = on_a_pty(stack, "build", "-t", "dypg/built:2", str(ctx))
    assert code == 0, term
    plain = ANSI.sub("", term)
    assert "\x1b[" in term and "CACHED" in plain and "COPY a.txt /a.txt" in plain, plain
    assert out.strip().startswith("sha256:")
    again = stack.cli("build", "--progress", "plain", "-t", "dypg/built:3", str(ctx), timeout=300)
    assert "#2 CACHED" in again.stderr.splitlines() and "#3 CACHED" in again.stderr.splitlines(), again.stderr
    quiet = stack.cli("build", "-q", "-t", "dypg/built:4", str(ctx), timeout=300)
    assert quiet.stderr == "" and quiet.stdout.strip().startswith("sha256:")
    js = stack.cli("build", "--json", "-t", "dypg/built:5", str(ctx), timeout=300)
    events = [json.loads(ln) for ln in js.stderr.splitlines() if ln.startswith("{")]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]
    assert all(e["cached"] for e in events if e["event"] == "step_done" and e["step"] > 1)
    assert json.loads(js.stdout)["digest"].startswith("sha256:")


def fresh_archive(tmp_path) -> tuple[Path, str]:
    """A docker-archive (skopeo's) of two random layers, named for nothing the stack has yet."""
    layers = []
    for i in range(2):
        root = tmp_path / f"root{i}"
        root.mkdir(parents=True)
        (root / f"data{i}.bin").write_bytes(os.urandom(300 << 10))
        layers.append(tar_dir(root))
    oci_layout(tmp_path / "layout", layers)
    name = f"dypg/ld-{uuid.uuid4().hex[:8]}:1"
    archive = tmp_path / "archive.tar"
    skopeo("copy", f"oci:{tmp_path / 'layout'}:latest", f"docker-archive:{archive}:{name}",
           env=skopeo_env(tmp_path / "home"))
    return archive, name


def test_save_draws_bars_and_its_stdout_stays_the_archive(stack, image, tmp_path):
    saved = tmp_path / "saved.tar"
    stack.cli("save", "-o", str(saved), image)
    code, out, term = on_a_pty(stack, "save", image, raw=True)
    assert code == 0, term
    plain = ANSI.sub("", term)
    assert "\x1b[" in term and "━" in term, term
    assert len(set(re.findall(r"([0-9a-f]{12}): Saved", plain))) == 2, plain  # a bar per layer
    assert out == saved.read_bytes()  # not a byte of progress in the archive
    with tarfile.open(fileobj=io.BytesIO(out)) as tf:
        assert [e["RepoTags"] for e in json.load(tf.extractfile("manifest.json"))] == [[image]]
    piped = tmp_path / "piped.tar"
    piped.write_bytes(out)
    assert f"Loaded image: {image}" in stack.cli("load", "-q", "-i", str(piped)).stdout


def test_save_plain_lines_json_lines_and_quiet(stack, image, tmp_path):
    out = tmp_path / "out.tar"
    for args in ([], ["--progress", "plain"]):
        p = stack.cli("save", *args, "-o", str(out), image)
        lines = p.stderr.splitlines()
        assert all(re.fullmatch(r"[0-9a-f]{12}: (Saving|Saved \S+)", ln) for ln in lines), p.stderr
        assert len([ln for ln in lines if " Saved " in ln]) == 2 and "\x1b" not in p.stderr, p.stderr
        assert p.stdout == ""
    p = stack.cli("--json", "save", "-o", str(out), image)
    events = [json.loads(ln) for ln in p.stderr.splitlines()]
    assert events and all(e["event"] == "transfer" for e in events), p.stderr
    done = [e for e in events if e["status"] == "done"]
    assert len(done) == 2 and all(e["current"] == e["total"] > 300 << 10 for e in done), events
    # to stdout (no -o, or `-o -`) with every mode but tty: the archive is the same bytes
    for to_stdout in ([], ["-o", "-"]):
        with open(tmp_path / "stdout.tar", "wb") as f:
            p = subprocess.run([sys.executable, "-m", "services.cli.main", "--json", "save", *to_stdout, image],
                               env=stack.env, stdout=f, stderr=subprocess.PIPE, timeout=300, check=True)
        again = [json.loads(ln) for ln in p.stderr.splitlines()]
        assert {e["event"] for e in again} == {"transfer"} and len([e for e in again if e["status"] == "done"]) == 2
        assert (tmp_path / "stdout.tar").read_bytes() == out.read_bytes()
    assert stack.cli("save", "-q", "-o", str(out), image).stderr == ""


def test_load_draws_bars_on_a_terminal(stack, tmp_path):
    archive, name = fresh_archive(tmp_path)
    code, out, term = on_a_pty(stack, "load", "-i", str(archive))
    assert code == 0, term
    plain = ANSI.sub("", term)
    assert "\x1b[" in term and "━" in term, term
    assert len(set(re.findall(r"([0-9a-f]{12}): Loaded", plain))) == 3, plain  # two layers, the config
    assert "Loading 1 image(s)" in plain
    assert f"Loaded image: {name}" in out and "\x1b" not in out


def test_load_plain_lines_json_lines_and_quiet(stack, tmp_path):
    archive, name = fresh_archive(tmp_path / "a")
    p = stack.cli("load", "-i", str(archive))
    lines = p.stderr.splitlines()
    assert re.fullmatch(r"Loading 1 image\(s\): 0\.6MB of layers", lines[0]), p.stderr
    assert all(re.fullmatch(r"[0-9a-f]{12}: (Loading|Loaded \S+)", ln) for ln in lines[1:]), p.stderr
    assert len([ln for ln in lines if " Loaded " in ln]) == 3, p.stderr
    again = stack.cli("load", "--progress", "plain", "-i", str(archive))  # the registry has every blob now
    assert again.stderr.startswith("Loading 1 image(s)") and all(
        re.fullmatch(r"[0-9a-f]{12}: Already exists", ln) for ln in again.stderr.splitlines()[1:]), again.stderr
    assert f"Loaded image: {name}" in again.stdout
    archive, name = fresh_archive(tmp_path / "b")
    js = stack.cli("--json", "load", "-i", str(archive))
    events = [json.loads(ln) for ln in js.stderr.splitlines()]
    assert events[0]["event"] == "log" and all(e["event"] == "transfer" for e in events[1:]), js.stderr
    assert len([e for e in events if e.get("status") == "done"]) == 3
    assert json.loads(js.stdout)[0]["name"] == name
    archive, name = fresh_archive(tmp_path / "c")
    quiet = stack.cli("load", "-q", "-i", str(archive))
    assert quiet.stderr == "" and f"Loaded image: {name}" in quiet.stdout


def test_gc_reports_each_job_as_it_ends(stack):
    p = stack.cli("gc", "run", "--dry-run", "--job", "uploads", "--job", "build-cache")
    lines = p.stderr.splitlines()
    assert lines[0] == "#1 [1/2] uploads" and lines[2] == "#2 [2/2] build-cache", p.stderr
    assert re.fullmatch(r"#1 DONE \d+\.\ds examined \d+, would remove \d+, freed \S+", lines[1]), p.stderr
    assert "JOB" in p.stdout  # the table stays on stdout
    assert stack.cli("gc", "run", "-q", "--dry-run", "--job", "uploads").stderr == ""
    js = stack.cli("--json", "gc", "run", "--dry-run", "--job", "uploads")
    events = [json.loads(ln) for ln in js.stderr.splitlines()]
    assert [e["event"] for e in events] == ["step", "gc_job", "step_done"], js.stderr
    job = events[1]
    assert job["job"] == "uploads" and job["freed"] == json.loads(js.stdout)["reports"][0]["freed"]


def test_gc_draws_its_jobs_on_a_terminal(stack):
    code, out, term = on_a_pty(stack, "gc", "run", "--dry-run", "--job", "uploads", "--job", "build-cache")
    assert code == 0, term
    plain = ANSI.sub("", term)
    assert "\x1b[" in term and "✔" in plain, term  # drawn: a spinner per job, ticked when it ends
    assert "#1 [1/2] uploads" in plain and "#2 [2/2] build-cache" in plain, plain
    assert re.search(r"DONE \d+\.\ds examined \d+, would remove \d+, freed \S+", plain), plain
    assert "JOB" in out and "\x1b" not in out


def test_run_shows_the_agents_pull_per_layer(stack, tmp_path):
    layout = tmp_path / "layout"
    # A layer of its own: busybox's alone may be on the agent already (other tests pull it),
    # and a layer that is there is not pulled.
    root = busybox_rootfs(tmp_path / "rootfs")
    (root / "unique").write_text(uuid.uuid4().hex)
    oci_layout(layout, [tar_dir(root)])
    ref = f"dypg/bb-{uuid.uuid4().hex[:6]}:1"
    skopeo("copy", "--dest-tls-verify=false", f"--dest-creds={stack.admin_creds}", f"oci:{layout}:latest",
           f"docker://{stack.registry_addr}/{ref}", env=skopeo_env(tmp_path / "home"))
    p = stack.cli("run", "--rm", "--pull", "always", ref, "echo", "ran", timeout=300)
    lines = p.stderr.splitlines()
    assert any(re.fullmatch(r"[0-9a-f]{12}: Pulling", ln) for ln in lines), p.stderr
    assert any(re.fullmatch(r"[0-9a-f]{12}: Pull complete \S+", ln) for ln in lines), p.stderr
    assert p.stdout == "ran\n"
    # `create` (and `run -d`) show the pull too (its layers are there now); stdout is the id alone
    p = stack.cli("create", "--pull", "always", ref, timeout=300)
    assert p.stderr.splitlines()[0].startswith("pulling ") and "sha256:" in p.stderr, p.stderr
    cid = p.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid), p.stdout
    stack.cli("rm", cid)


async def test_gc_progress_goes_to_inboxes_only(stack):
    """The collector may publish where its caller may not: a progress_inbox that names another
    subject is refused before any job runs."""
    from shared import bus, subjects
    from shared.errors import InvalidArgument
    from shared.messages.gc import RunReply, RunRequest
    nc = await bus.connect(stack.nats_url)
    try:
        client = bus.BusClient(nc)
        with pytest.raises(InvalidArgument, match="progress_inbox"):
            await client.request(subjects.GC_RUN, RunRequest(jobs=["uploads"], dry_run=True,
                                                              progress_inbox=subjects.BLOB_DELETE), RunReply)
        seen = []
        reply = await client.request_with_progress(subjects.GC_RUN, RunRequest(jobs=["uploads"], dry_run=True),
                                                   RunReply, seen.append)
        assert [p.kind for p in seen] == ["step", "report"] and reply.reports[0].job == "uploads"
    finally:
        await nc.drain()
