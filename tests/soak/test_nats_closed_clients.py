"""Found by the soak: nats-server keeps a record of each closed connection (for its monitoring
`/connz?state=closed`), 10,000 by default, and every CLI command is a connection, with a
user JWT of several KB. Over a long soak its RSS grew with them; the generated server config
keeps 100 (`max_closed_clients`)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest

from shared import bus_lite
from shared.natsserver import find_binary
from tests.soak.conftest import server_files

CONNECTIONS = 150


@pytest.fixture
def server(tmp_path):
    conf, creds = server_files(tmp_path, "soak")
    ports = tmp_path / "ports"
    ports.mkdir()
    # -1: a free port for clients and for monitoring, read back from the ports file
    proc = subprocess.Popen([find_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", "-1", "-m", "-1",
                             "--ports_file_dir", str(ports)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "nats.log", "wb"), start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while not (files := list(ports.glob("*.ports"))):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "nats.log").read_text()
            time.sleep(0.05)
        time.sleep(0.05)  # written whole once it exists
        urls = json.loads(files[0].read_text())
        yield urls["nats"][0], urls["monitoring"][0], str(creds)
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_server_keeps_a_bounded_number_of_closed_connections(server):
    url, monitoring, creds = server
    import asyncio

    async def churn() -> None:
        for _ in range(CONNECTIONS):
            c = await bus_lite.connect(url, name="dockyard-cli", creds=creds, connect_timeout=5)
            await c.nc.drain()

    asyncio.run(churn())
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"{monitoring}/connz?state=closed&limit=1", timeout=5) as r:
            total = json.load(r)["total"]
        if total >= 100 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert total == 100  # not CONNECTIONS: the oldest are forgotten
