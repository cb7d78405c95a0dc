"""`network create --driver overlay` across two hosts (network namespaces on one bridge, each
with its own `dockyard up`): a container on host 1 finds one on host 2 by name and reaches it
over VXLAN; the addresses come from one range kept in the bus's KV."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.test_networks import fetch, resolved
from tests.fleet.pushing import push_busybox
from tests.fleet.test_join import _first_node, _token

pytestmark = pytest.mark.root

IMAGE = "fleet/busybox:1"


def test_an_overlay_spans_two_hosts(make_fleet, tmp_path):
    fl = make_fleet(2)
    h1, h2 = fl.hosts
    _first_node(h1)
    h2.up("--join", h1.addr, "--token", _token(h1), "--listen", h2.addr, "--services", "runtime-agent")
    for _ in range(50):
        if len(json.loads(h1.cli("--json", "agents").stdout)) == 2:
            break
        time.sleep(0.2)
    push_busybox(h1, tmp_path, f"{h1.addr}:5000/{IMAGE}")

    ids = h1.cli("network", "create", "--driver", "overlay", "ov").stdout.split()
    assert len(ids) == 1  # one network, on both hosts
    listed = [r.split() for r in h1.cli("network", "ls", "--filter", "name=ov").stdout.splitlines()[1:]]
    assert sorted((r[1], r[2], r[3], r[4]) for r in listed) == sorted(
        ("ov", "overlay", "global", h.agent_id) for h in (h1, h2)), listed
    try:
        h1.cli("run", "-d", "--name", "far", "--host", h2.agent_id, "--network", "ov", "--network-alias", "svc",
               IMAGE, "httpd", "-f", "-p", "8080", "-h", "/etc")
        far = json.loads(h1.cli("inspect", "far").stdout)[0]
        ip = far["NetworkSettings"]["Networks"]["ov"]["IPAddress"]
        p = h1.cli("run", "--rm", "--host", h1.agent_id, "--network", "ov", IMAGE, "sh", "-c",
                   f"nslookup far; nslookup svc; {fetch(ip, '/hostname')}", check=False)
        assert resolved(p.stdout, "far") == [ip] and resolved(p.stdout, "svc") == [ip], \
            p.stdout + p.stderr + h1.log("runtime-agent")
        assert far["Config"]["Hostname"] in p.stdout, p.stdout + h2.log("runtime-agent")
        # the two hosts never hand out one address: a second container on host 1 gets another
        h1.cli("run", "-d", "--name", "near", "--host", h1.agent_id, "--network", "ov", IMAGE, "sleep", "300")
        near = json.loads(h1.cli("inspect", "near").stdout)[0]["NetworkSettings"]["Networks"]["ov"]["IPAddress"]
        assert near != ip
    finally:
        h1.cli("rm", "-f", "far", "near", check=False)
        h1.cli("network", "rm", "ov", check=False)
    assert h1.cli("network", "inspect", "ov", check=False).returncode != 0
