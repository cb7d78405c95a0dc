"""The requests every workflow's set-up makes, and the checks the spec puts on replies."""

from __future__ import annotations

import uuid

from tests.conformance.client import Client, Reply
from tests.conformance.content import OCI_MANIFEST, SPEC_CODES, digest

OK = range(200, 300)
DELETED_OR_REFUSED = (202, 405)  # deletion MAY be disabled (405)


def repo_name(workflow: str) -> str:
    return f"dyconf/{workflow}-{uuid.uuid4().hex[:8]}"


def assert_error(reply: Reply, status: int | tuple[int, ...], code: str | None = None) -> None:
    """The status; a 4XX body MAY be in any format, but a JSON one is the spec's error list."""
    wanted = (status,) if isinstance(status, int) else status
    assert reply.status in wanted, (reply.status, reply.body[:500])
    if reply.is_json:
        codes = reply.error_codes()
        assert codes and set(codes) <= SPEC_CODES, codes
        if code is not None:
            assert codes[0] == code, codes


async def push_blob(client: Client, repo: str, data: bytes) -> Reply:
    """POST for a session, then PUT the bytes at its Location: the suite's set-up upload."""
    started = await client.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert started.status == 202, (started.status, started.body)
    done = await client.request("PUT", client.location(started), params={"digest": digest(data)},
                                headers={"Content-Type": "application/octet-stream"}, data=data)
    assert done.status == 201, (done.status, done.body)
    return done


async def put_manifest(client: Client, repo: str, reference: str, body: bytes,
                       media_type: str = OCI_MANIFEST) -> Reply:
    return await client.request("PUT", f"/v2/{repo}/manifests/{reference}",
                                headers={"Content-Type": media_type}, data=body)


async def get_blob(client: Client, repo: str, blob_digest: str, method: str = "GET") -> Reply:
    return await client.request(method, f"/v2/{repo}/blobs/{blob_digest}")


async def get_manifest(client: Client, repo: str, reference: str, method: str = "GET") -> Reply:
    return await client.request(method, f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})


def assert_blob(reply: Reply, data: bytes) -> None:
    """A blob GET: 200, the exact bytes, and a Docker-Content-Digest (if any) that matches them."""
    assert reply.status == 200, (reply.status, reply.body[:300])
    assert reply.body == data
    if "Docker-Content-Digest" in reply.headers:
        assert reply.headers["Docker-Content-Digest"] == digest(data)
