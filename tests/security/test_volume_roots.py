"""Host bind mounts: `run` binds only under DOCKYARD_AGENT_VOLUME_ROOTS; anything else
needs the agent's `run-host-bind` verb, which only the admin role may publish."""

from __future__ import annotations

import asyncio
import os

import pytest

from services.runtime_agent.containers.config import confine_volumes, parse_volume_roots, parse_volumes
from shared import bus, subjects
from shared.errors import InvalidArgument, PermissionDenied
from shared.messages.agent import VERB_RUN, VOLUME_OUTSIDE_ROOTS, RunReply, RunRequest
from tests.e2e.test_agent_fleet import running_fleet

GiB = 1 << 30


@pytest.fixture
def tree(tmp_path):
    """A root with a file, a link inside it pointing out, and a directory outside it."""
    root = tmp_path / "roots" / "a"
    (root / "data").mkdir(parents=True)
    (root / "data" / "f").write_text("inside the root\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("outside the root\n")
    (root / "escape").symlink_to(outside)
    return root, outside


def test_paths_are_checked_after_resolving_links_and_dotdot(tree):
    root, outside = tree
    roots = parse_volume_roots(f"{root}:/nonexistent/other")
    ok = confine_volumes(parse_volumes([f"{root}/data:/d:ro", f"{root}/./data/../data:/e"]), roots)
    assert [(v.source, v.destination, v.readonly) for v in ok] == [
        (str(root / "data"), "/d", True), (str(root / "data"), "/e", False)]
    for spec in ["/:/host", f"{root}/escape:/x", f"{root}/../../outside:/x", f"{root}/escape/secret:/x",
                 f"{root}x:/x", f"{outside}:/x"]:
        with pytest.raises(PermissionDenied) as ei:
            confine_volumes(parse_volumes([spec]), roots)
        assert ei.value.detail_code == VOLUME_OUTSIDE_ROOTS
        assert os.path.normpath(spec.split(":")[0]) in ei.value.message
        assert "DOCKYARD_AGENT_VOLUME_ROOTS" in ei.value.message


def test_no_roots_refuses_every_host_path_and_none_allows_any(tree):
    root, outside = tree
    with pytest.raises(PermissionDenied, match=r"DOCKYARD_AGENT_VOLUME_ROOTS \(none set\)"):
        confine_volumes(parse_volumes([f"{root}/data:/d"]), parse_volume_roots(""))
    (v,) = confine_volumes(parse_volumes([f"{root}/escape:/x"]), None)
    assert v.source == str(outside)  # the link resolved: what is mounted is what was checked
    with pytest.raises(InvalidArgument, match="absolute"):
        parse_volume_roots("relative/dir")


# ---- a real agent ---------------------------------------------------------------------------

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")


@pytest.fixture(scope="module")
def fleet(nats_url, tmp_path_factory):
    base = tmp_path_factory.mktemp("volume-roots")
    roots = base / "roots"
    (roots / "data").mkdir(parents=True)
    (roots / "data" / "f").write_text("from a volume root\n")
    (base / "elsewhere").mkdir()
    (base / "elsewhere" / "g").write_text("from outside the roots\n")
    with running_fleet(base, nats_url, {3: 2 * GiB}, {"DOCKYARD_AGENT_VOLUME_ROOTS": str(roots)}) as f:
        yield f


async def _run(nats_url: str, subject: str, volumes: list[str]) -> RunReply:
    nc = await bus.connect(nats_url)
    try:
        req = RunRequest(image="busybox", command=["true"], volumes=volumes, rm=True, network="none")
        return await bus.BusClient(nc).request(subject, req, RunReply, timeout=120)
    finally:
        await nc.drain()


@root_only
@pytest.mark.root
@pytest.mark.e2e
def test_operator_run_with_the_host_root_is_refused(fleet, nats_url):
    agent = fleet.agents[0].id
    with pytest.raises(PermissionDenied) as ei:
        asyncio.run(_run(nats_url, subjects.agent(agent, VERB_RUN), ["/:/host"]))
    assert ei.value.detail_code == VOLUME_OUTSIDE_ROOTS
    assert "host path / is outside DOCKYARD_AGENT_VOLUME_ROOTS" in ei.value.message
    assert fleet.cli("ps", "-a", "-q", "--host", agent).stdout == ""  # refused before anything existed


@root_only
@pytest.mark.root
@pytest.mark.e2e
def test_a_bind_under_a_root_is_accepted_and_the_container_sees_the_file(fleet):
    roots = fleet.env["DOCKYARD_AGENT_VOLUME_ROOTS"]
    p = fleet.cli("run", "--rm", "--network", "none", "-v", f"{roots}/data:/data:ro", "busybox",
                  "cat", "/data/f")
    assert p.stdout == "from a volume root\n"


@root_only
@pytest.mark.root
@pytest.mark.e2e
def test_a_bind_outside_the_roots_works_on_the_admin_verb(fleet, nats_url):
    elsewhere = fleet.root / "elsewhere"
    reply = asyncio.run(_run(nats_url, subjects.agent(fleet.agents[0].id, subjects.AGENT_RUN_HOST_BIND),
                             [f"{elsewhere}:/x:ro"]))
    assert [v.source for v in reply.container.config.volumes] == [str(elsewhere)]
    # The CLI goes there by itself once the agent refused the bind on `run`.
    p = fleet.cli("run", "--rm", "--network", "none", "-v", f"{elsewhere}:/data:ro", "busybox",
                  "cat", "/data/g")
    assert p.stdout == "from outside the roots\n"
