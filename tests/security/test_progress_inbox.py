"""A request's `progress_inbox` cannot aim a service's progress at another subject.

The builder, the registry-gateway's copy and the garbage-collector publish Progress to
the inbox a request names, with their own permissions, which are wider than a caller's:
each refuses, over a real bus, anything that is not an inbox with InvalidArgument before
it runs, and publishes nothing on the subject named. An inbox still works.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shared import bus, subjects
from shared.errors import DockyardError, InvalidArgument
from shared.messages.auth import CopyReply, CopyRequest
from shared.messages.builder import BuildReply, BuildRequest, ImportReply, ImportRequest
from shared.messages.gc import RunReply, RunRequest
from shared.oci.digest import Digest
from tests.e2e.conftest import start_stack, stop_stack

pytestmark = pytest.mark.e2e

NOWHERE = Digest("sha256:" + "0" * 64)  # a context or tarball the stack does not have

# (subject, request with the inbox to fill in, reply type): each would fail later on, harmlessly
REQUESTS = {
    "builder build": (subjects.BUILD, lambda inbox: BuildRequest(context=NOWHERE, dockerfile="FROM scratch\n",
                                                                   progress_inbox=inbox), BuildReply),
    "builder import": (subjects.BUILD_IMPORT, lambda inbox: ImportRequest(source=NOWHERE, tag="dypi/x:1",
                                                                          progress_inbox=inbox), ImportReply),
    "registry-gateway copy": (subjects.REGISTRY_COPY,
                              lambda inbox: CopyRequest(source="127.0.0.1:9/nothing:1", destination="dypi/x:1",
                                                        progress_inbox=inbox), CopyReply),
    "garbage-collector run": (subjects.GC_RUN, lambda inbox: RunRequest(jobs=["uploads"], dry_run=True,
                                                                        progress_inbox=inbox), RunReply),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("dypi-stack"),
                    only=["layer-store", "registry-gateway", "builder", "garbage-collector"])
    yield s
    assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


async def _ask(stack, name: str, inbox: str) -> tuple[object, list[bytes]]:
    """REQUESTS[name] with `inbox`: (its reply or error, what arrived on `inbox` meanwhile)."""
    subject, make, reply_type = REQUESTS[name]
    nc = await bus.connect(stack.nats_url)
    try:
        seen: list[bytes] = []

        async def took(m) -> None:
            seen.append(m.data)

        sub = await nc.subscribe(inbox, cb=took) if inbox else None
        try:
            got: object = await bus.BusClient(nc).request(subject, make(inbox), reply_type, timeout=60)
        except DockyardError as e:
            got = e
        await nc.flush()
        await asyncio.sleep(0.2)  # anything published before the reply has arrived by now
        if sub is not None:
            await sub.unsubscribe()
        return got, seen
    finally:
        await nc.drain()


@pytest.mark.parametrize("name", REQUESTS)
@pytest.mark.parametrize("target", ["dypi.victim.{}", "_INBOX.{}.>", "_INBOXX.{}"])
async def test_a_subject_that_is_no_inbox_is_refused(stack, name, target):
    victim = target.format(uuid.uuid4().hex)
    got, seen = await _ask(stack, name, victim)
    assert isinstance(got, InvalidArgument) and "progress_inbox" in str(got), got
    assert seen == []


@pytest.mark.parametrize("name", REQUESTS)
async def test_an_inbox_passes_to_the_work(stack, name):
    got, seen = await _ask(stack, name, f"_INBOX.{uuid.uuid4().hex}")
    # the request got past decoding: its own failure (nothing to build, import or copy) or the GC's run
    assert "progress_inbox" not in str(got), got
    if name == "garbage-collector run":
        assert isinstance(got, RunReply) and got.reports[0].job == "uploads"
        assert len(seen) == 2  # the job's step and its report
    else:
        assert isinstance(got, DockyardError), got
