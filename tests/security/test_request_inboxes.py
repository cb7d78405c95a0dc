"""A request's inbox cannot aim a service's messages at another subject.

The builder, the registry-gateway's copy, the garbage-collector (`progress_inbox`) and the
runtime-agent (`stream_inbox`, a session's `attach.inbox`) publish to the inbox a request
names, with their own permissions, which are wider than a caller's: each refuses, over a
real bus, anything that is not an inbox with InvalidArgument before it runs, and publishes
nothing on the subject named. An inbox still works.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import pytest

from shared import bus, subjects
from shared.errors import DockyardError, InvalidArgument
from shared.messages import agent as am
from shared.messages.auth import CopyReply, CopyRequest
from shared.messages.builder import BuildReply, BuildRequest, ImportReply, ImportRequest
from shared.messages.gc import RunReply, RunRequest
from shared.messages.interactive import AttachSpec, ExecReply, ExecRequest
from shared.oci.digest import Digest
from tests.e2e.conftest import start_stack, stop_stack

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="the stack's agent needs root and an OCI runtime")]

NOWHERE = Digest("sha256:" + "0" * 64)  # a context or tarball the stack does not have


def requests(agent: str) -> dict:
    """name -> (subject, request with the inbox filled in, reply type, the field's path): each
    would fail later on, harmlessly (nothing to build, import, copy, pull or run)."""
    return {
        "builder build": (subjects.BUILD, lambda i: BuildRequest(context=NOWHERE, dockerfile="FROM scratch\n",
                                                                   progress_inbox=i), BuildReply, "progress_inbox"),
        "builder import": (subjects.BUILD_IMPORT, lambda i: ImportRequest(source=NOWHERE, tag="dypi/x:1",
                                                                          progress_inbox=i), ImportReply,
                           "progress_inbox"),
        "registry-gateway copy": (subjects.REGISTRY_COPY,
                                  lambda i: CopyRequest(source="127.0.0.1:9/nothing:1", destination="dypi/x:1",
                                                        progress_inbox=i), CopyReply, "progress_inbox"),
        "garbage-collector run": (subjects.GC_RUN, lambda i: RunRequest(jobs=["uploads"], dry_run=True,
                                                                        progress_inbox=i), RunReply,
                                  "progress_inbox"),
        "runtime-agent run": (subjects.agent(agent, am.VERB_RUN),
                              lambda i: am.RunRequest(image="dypi/none:1", pull="never", stream_inbox=i),
                              am.RunReply, "stream_inbox"),
        "runtime-agent pull": (subjects.agent(agent, am.VERB_PULL),
                               lambda i: am.PullRequest(image="dypi/none:1", stream_inbox=i), am.PullReply,
                               "stream_inbox"),
        "runtime-agent logs": (subjects.agent(agent, am.VERB_LOGS),
                               lambda i: am.LogsRequest(container="dypi-none", stream_inbox=i), am.LogsReply,
                               "stream_inbox"),
        "runtime-agent exec": (subjects.agent(agent, subjects.AGENT_EXEC),
                               lambda i: ExecRequest(container="dypi-none", args=["true"],
                                                     attach=AttachSpec(session="0" * 32, inbox=i)),
                               ExecReply, "attach.inbox"),
    }


NAMES = list(requests(""))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("dypi-stack"),
                    only=["layer-store", "registry-gateway", "builder", "garbage-collector", "runtime-agent"])
    try:
        for _ in range(100):  # the agent is listed once its first heartbeat is in
            agents = json.loads(s.cli("agents", "--json").stdout)
            if agents:
                break
            time.sleep(0.1)
        s.agent_id = agents[0]["agent_id"]
        yield s
    finally:
        assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


async def _ask(stack, name: str, inbox: str) -> tuple[object, list[bytes]]:
    """REQUESTS[name] with `inbox`: (its reply or error, what arrived on `inbox` meanwhile)."""
    subject, make, reply_type, _ = requests(stack.agent_id)[name]
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


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("target", ["dypi.victim.{}", "_INBOX.{}.>", "_INBOXX.{}"])
async def test_a_subject_that_is_no_inbox_is_refused(stack, name, target):
    victim = target.format(uuid.uuid4().hex)
    got, seen = await _ask(stack, name, victim)
    field = requests(stack.agent_id)[name][3]
    assert isinstance(got, InvalidArgument) and f"$.{field}`" in str(got), got
    assert seen == []


@pytest.mark.parametrize("name", NAMES)
async def test_an_inbox_passes_to_the_work(stack, name):
    got, seen = await _ask(stack, name, f"_INBOX.{uuid.uuid4().hex}")
    # the request got past decoding: its own failure (nothing to do) or the GC's run
    assert "inbox" not in str(got), got
    if name == "garbage-collector run":
        assert isinstance(got, RunReply) and got.reports[0].job == "uploads"
        assert len(seen) == 2  # the job's step and its report
    else:
        assert isinstance(got, DockyardError), got
