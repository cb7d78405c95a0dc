"""A host lost: shown lost, avoided by placement; back with the same data dir it rejoins without a
token and reconciles its containers; `fleet remove` then shuts it out for good."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from shared import bus
from shared.errors import Unauthenticated
from tests.fleet.pushing import push_busybox
from tests.support.waiting import wait_for

pytestmark = pytest.mark.root
GiB = 1 << 30


def _agents(h) -> dict[str, dict]:
    return {a["agent_id"]: a for a in json.loads(h.cli("--json", "agents").stdout)}


def _ps(h, host: str) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(h.cli("--json", "ps", "-a", "--host", host).stdout)}


def _run(h, *args: str) -> str:
    return h.cli("run", "-d", *args, "fleet/busybox:1", "sleep", "600").stdout.strip()


def test_a_lost_host_is_avoided_rejoins_without_a_token_and_reconciles_then_removal_shuts_it_out(
        make_fleet, tmp_path):
    fl = make_fleet(2)
    h1, h2 = fl.hosts
    # h2 offers more memory: placement picks it whenever it is alive
    h1.env["DOCKYARD_AGENT_MEMORY"], h2.env["DOCKYARD_AGENT_MEMORY"] = str(4 * GiB), str(8 * GiB)
    h1.up("--listen", h1.addr, "--nats-port", "4222", "--registry-addr", f"{h1.addr}:5000")
    token = h1.cli("fleet", "token").stdout.strip()
    h2.up("--join", h1.addr, "--token", token, "--listen", h2.addr, "--services", "runtime-agent")
    wait_for("two agents", lambda: len(_agents(h1)) == 2)

    push_busybox(h1, tmp_path, f"{h1.addr}:5000/fleet/busybox:1")
    _run(h1, "--name", "keep")
    _run(h1, "--name", "die")
    on_h2 = _ps(h1, h2.agent_id)
    assert {on_h2["keep"]["state"]["status"], on_h2["die"]["state"]["status"]} == {"running"}, on_h2

    # kill -9 every dockyard process of host 2; one of its containers dies while nobody watches
    stack = h2.stack
    assert stack["nats_pid"], stack  # a joined host runs a NATS node of its own: killed with the rest
    for pid in [stack["up_pid"], stack["nats_pid"], *stack["pids"].values()]:
        os.kill(pid, signal.SIGKILL)
    os.kill(on_h2["die"]["state"]["pid"], signal.SIGKILL)
    h2.stop()  # reaps what was killed

    wait_for("host 2 shown lost", lambda: _agents(h1)[h2.agent_id]["lost"])
    ls = {x["host"]: x for x in json.loads(h1.cli("--json", "fleet", "ls").stdout)}
    assert ls[h2.agent_id]["status"] == "lost" and ls[h1.agent_id]["status"] == "ready", ls
    placed = _run(h1, "--name", "placed")
    assert _ps(h1, h1.agent_id)["placed"]["id"] == placed  # not on the lost host, roomier as it is
    pinned = h1.cli("run", "-d", "--host", h2.agent_id, "fleet/busybox:1", "true", check=False)
    assert pinned.returncode != 0 and f"host {h2.agent_id} is lost" in pinned.stderr, pinned.stderr

    # back with the same data dir and no token: it rejoins and settles what happened meanwhile
    h2.up("--listen", h2.addr, "--services", "runtime-agent")
    wait_for("host 2 back", lambda: not _agents(h1)[h2.agent_id]["lost"])
    after = _ps(h1, h2.agent_id)
    assert after["keep"]["state"]["status"] == "running", after["keep"]["state"]
    assert after["keep"]["state"]["pid"] == on_h2["keep"]["state"]["pid"]  # the same process, kept
    assert after["die"]["state"]["status"] == "exited", after["die"]["state"]
    assert after["die"]["state"]["exit_code"] == 137, after["die"]["state"]
    assert _run(h1, "--name", "again") and _ps(h1, h2.agent_id)["again"]["state"]["status"] == "running"

    # removed: its credentials are revoked, it cannot connect again, and `agents` forgets it
    creds = next((h2.data_dir / "credentials").glob("runtime-agent*.creds"))
    removed = h1.cli("fleet", "remove", h2.agent_id)
    assert "credentials revoked" in removed.stdout
    assert h2.agent_id not in {x["host"] for x in json.loads(h1.cli("--json", "fleet", "ls").stdout)}

    async def connect():
        nc = await bus.connect(f"nats://{h1.addr}:4222", creds=str(creds),
                               ca=str(h1.data_dir / "credentials" / "ca.pem"), connect_timeout=3)
        await nc.close()

    with pytest.raises(Unauthenticated):
        asyncio.run(connect())
    wait_for("removed host forgotten by `agents`", lambda: h2.agent_id not in _agents(h1))
    time.sleep(3.5)  # past the exchange's second look: a heartbeat in flight did not bring it back
    assert h2.agent_id not in _agents(h1)
    again = h1.cli("fleet", "remove", h2.agent_id, check=False)
    assert again.returncode != 0 and "no host" in again.stderr
