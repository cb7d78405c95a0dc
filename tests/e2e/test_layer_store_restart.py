"""A layer-store killed (-9) in the middle of a push comes back on a new port; the URLs the
gateway hands out right after must already be the new ones: the retried push and a GET of
a blob by digest (no manifest read first) succeed on their first try. Real processes."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from yarl import URL

from shared.oci.digest import Digest
from tests.e2e.conftest import Stack, start_stack, stop_stack
from tests.support.plainhttp import basic_auth, request

pytestmark = pytest.mark.e2e

REPO = "dyrs/restart"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("dyrs-stack"), only=["layer-store", "registry-gateway"])
    yield s
    assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


def start_upload(stack: Stack, auth: dict[str, str]) -> URL:
    status, headers, body = request(f"{stack.registry_url}/v2/{REPO}/blobs/uploads/", "POST", b"", auth)
    assert status == 202, body
    return URL(stack.registry_url).join(URL(headers["Location"], encoded=True))


def push(stack: Stack, auth: dict[str, str], data: bytes) -> URL:
    """A chunked push: two PATCHes and the closing PUT, at the URLs the replies name."""
    location = start_upload(stack, auth)
    first = location
    half = len(data) // 2
    for start, chunk in ((0, data[:half]), (half, data[half:])):
        status, headers, body = request(location, "PATCH", chunk,
                                        {**auth, "Content-Range": f"{start}-{start + len(chunk) - 1}"})
        assert status == 202, body
        location = location.join(URL(headers["Location"], encoded=True))
    put = location.update_query(digest=str(Digest.from_bytes(data)))
    status, _, body = request(put, "PUT", b"", auth)
    assert status == 201, body
    return first


def kill_layer_store(stack: Stack) -> None:
    """kill -9 the layer-store and wait until `dockyard up` has it serving again."""
    log = stack.data_dir / "logs" / "layer-store.log"
    served = log.read_text(errors="replace").count("layer-store serving")
    pid = json.loads((stack.data_dir / "stack.json").read_text())["pids"]["layer-store"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count("layer-store serving") <= served:
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        assert stack.proc.poll() is None, (stack.data_dir / "up.log").read_text(errors="replace")
        time.sleep(0.1)


def test_urls_handed_out_after_a_restart_answer(stack):
    auth = basic_auth(stack.admin_creds)
    kept = os.urandom(3 << 20)
    first = push(stack, auth, kept)
    assert first.port != URL(stack.registry_url).port, "on loopback uploads go to the layer-store"

    # a push interrupted by the kill, between its chunks
    interrupted = os.urandom(2 << 20)
    location = start_upload(stack, auth)
    status, _, _ = request(location, "PATCH", interrupted[:1 << 20],
                           {**auth, "Content-Range": f"0-{(1 << 20) - 1}"})
    assert status == 202
    kill_layer_store(stack)

    # the first request after the restart: a blob by digest, redirected to the layer-store
    status, _, body = request(f"{stack.registry_url}/v2/{REPO}/blobs/{Digest.from_bytes(kept)}", headers=auth)
    assert status == 200 and body == kept

    kill_layer_store(stack)
    # the first request after this one: the client retries its whole push
    assert push(stack, auth, interrupted).port != URL(stack.registry_url).port  # still direct
    status, headers, body = request(f"{stack.registry_url}/v2/{REPO}/blobs/{Digest.from_bytes(interrupted)}",
                                    headers=auth)
    assert status == 200 and body == interrupted
