"""User networks across a runtime-agent restart: records, bridges, addresses and names survive;
an idle agent leaves no bridge or chain of them behind and rebuilds them on its next start."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.e2e.test_agent_fleet import running_fleet
from tests.e2e.test_networks import fetch, resolved

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

GiB = 1 << 30


@pytest.fixture(scope="module")
def fleet(nats_url, tmp_path_factory):
    slot = (os.getpid() * 4 + 3) % 4096
    pool = {"DOCKYARD_NETWORK_POOL": f"172.{16 + slot // 256}.{slot % 256}.0/24", "DOCKYARD_NETWORK_POOL_SIZE": "27"}
    with running_fleet(tmp_path_factory.mktemp("netrestart"), nats_url, {1: 2 * GiB}, extra_env=pool) as f:
        yield f


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def _bridge(f, name: str) -> str:
    return json.loads(f.cli("network", "inspect", name).stdout)[0]["Options"]["com.docker.network.bridge.name"]


def test_containers_on_a_user_network_outlive_an_agent_restart(fleet):
    agent = fleet.agents[0]
    fleet.cli("network", "create", "keep")
    try:
        fleet.cli("run", "-d", "--name", "web", "--network", "keep", "--network-alias", "www", "busybox",
                  "httpd", "-f", "-p", "8080", "-h", "/etc")
        ip = json.loads(fleet.cli("inspect", "web").stdout)[0]["NetworkSettings"]["Networks"]["keep"]["IPAddress"]
        agent.stop()
        agent.start()
        p = fleet.cli("run", "--rm", "--network", "keep", "busybox", "sh", "-c",
                      f"nslookup www; {fetch(ip, '/hostname')}", check=False)
        assert resolved(p.stdout, "www") == [ip], p.stdout + p.stderr
        hostname = json.loads(fleet.cli("inspect", "web").stdout)[0]["Config"]["Hostname"]
        assert hostname in p.stdout
        # the restarted agent still knows who is on the network, so it is not removable
        busy = fleet.cli("network", "rm", "keep", check=False)
        assert busy.returncode != 0 and "web" in busy.stderr
    finally:
        fleet.cli("rm", "-f", "web", check=False)
        fleet.cli("network", "rm", "keep", check=False)


def test_an_idle_agent_removes_the_bridges_and_its_next_start_rebuilds_them(fleet):
    agent = fleet.agents[0]
    fleet.cli("network", "create", "--internal", "idle")
    try:
        bridge = _bridge(fleet, "idle")
        assert f" {bridge}:" in _links()
        agent.stop()
        assert f" {bridge}:" not in _links()
        assert bridge.upper().replace("-", "N") not in subprocess.run(["iptables-save"], capture_output=True,
                                                                      text=True).stdout
        agent.start()
        assert f" {bridge}:" in _links()
        info = json.loads(fleet.cli("network", "inspect", "idle").stdout)[0]
        assert info["Internal"] is True and _bridge(fleet, "idle") == bridge
        p = fleet.cli("run", "--rm", "--network", "idle", "busybox", "sh", "-c", "ip route", check=False)
        assert p.returncode == 0 and "default" not in p.stdout, p.stdout + p.stderr
    finally:
        fleet.cli("network", "rm", "idle", check=False)
    assert f" {bridge}:" not in _links()
