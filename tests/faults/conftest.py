"""The kill -9 tests' fixtures: one whole stack (its agent isolated like tests/e2e/test_gc_jobs.py's),
clients of its registry and bus, the test images, and a container that must outlive every kill."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import aiohttp
import pytest

from shared import bus
from tests.e2e.conftest import start_stack, stop_agent_stack
from tests.faults import procs
from tests.faults.checks import Images, Survivor
from tests.faults.oci import Registry, make_image
from tests.e2e.test_gc import env

AGENT = f"dyfk{os.getpid()}"
CGROUP_PARENT = "/dyfk-test"
# A dead collector's lease blocks its jobs this long (the default is 60 s).
GC_LEASE_TTL = "3"


@pytest.fixture(scope="module")
def fstack(tmp_path_factory):
    root = tmp_path_factory.mktemp("dyfk")
    with env(DOCKYARD_AGENT_ID=AGENT, DOCKYARD_BRIDGE=f"dyfkb{os.getpid() % 10000}",
             DOCKYARD_SUBNET=f"10.235.{os.getpid() % 250}.0/24",
             DOCKYARD_NET_PREFIX=f"dyfk{os.getpid() % 100000}", DOCKYARD_CGROUP_PARENT=CGROUP_PARENT,
             DOCKYARD_GC_LEASE_TTL=GC_LEASE_TTL):
        s = start_stack(root / "data")
    s.restarted_nats: list[subprocess.Popen] = []  # nats-servers a test started in up's place
    try:
        yield s
    finally:
        code = stop_agent_stack(s, CGROUP_PARENT)
        # a service killed -9 cannot unmount what it mounted (test_kill9's builder case)
        for m in sorted(procs.mounts_under(root), reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        for p in s.restarted_nats:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    assert code == 0, (s.data_dir / "up.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Images:
    return Images(tmp_path_factory.mktemp("dyfk-images"))


@pytest.fixture
async def reg(fstack):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        yield Registry(http, fstack.registry_addr, ("admin", fstack.admin_password))


@pytest.fixture
async def client(fstack):
    nc = await bus.connect(fstack.nats_url, name="faults-test")
    yield bus.BusClient(nc)
    await nc.close()


@pytest.fixture(scope="module")
def survivor(fstack, images) -> Survivor:
    async def push() -> None:
        async with aiohttp.ClientSession() as http:
            await images.push(Registry(http, fstack.registry_addr, ("admin", fstack.admin_password)),
                              "faults/bb", "1", make_image([images.base]))
    asyncio.run(push())
    fstack.cli("run", "-d", "--name", "faults-web", "--publish", "127.0.0.1::8080", "faults/bb:1",
               "sh", "-c", "echo started; exec httpd -f -p 8080 -h /etc")
    return Survivor(fstack, "faults-web")
