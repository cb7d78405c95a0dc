"""IPAM: one address per container, persisted atomically, surviving a new instance."""

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from services.runtime_agent.network.ipam import Ipam
from shared.errors import Unavailable

NET = IPv4Network("10.89.200.0/29")  # .1 gateway, .2-.6 for containers, .7 broadcast


async def test_allocates_after_gateway_and_is_stable_per_container(tmp_path):
    ipam = Ipam(tmp_path / "ipam.json", NET)
    assert ipam.gateway == IPv4Address("10.89.200.1")
    a = await ipam.allocate("a")
    b = await ipam.allocate("b")
    assert (a, b) == (IPv4Address("10.89.200.2"), IPv4Address("10.89.200.3"))
    assert await ipam.allocate("a") == a  # a retried set-up keeps its address
    assert str(ipam.interface(a)) == "10.89.200.2/29"


async def test_survives_a_new_instance_and_release_frees(tmp_path):
    path = tmp_path / "state" / "ipam.json"
    first = Ipam(path, NET)
    a = await first.allocate("a")
    b = await first.allocate("b")

    second = Ipam(path, NET)  # an agent restart
    assert second.allocations() == {"a": a, "b": b}
    assert await second.release("a") == a
    assert await second.release("a") is None  # idempotent

    third = Ipam(path, NET)
    assert third.allocations() == {"b": b}
    on_disk = json.loads(path.read_text())
    assert on_disk["allocations"] == {"b": str(b)}
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp files left


async def test_does_not_reuse_a_released_address_at_once_and_wraps(tmp_path):
    ipam = Ipam(tmp_path / "ipam.json", NET)
    ips = [await ipam.allocate(c) for c in "abcde"]  # the whole range
    with pytest.raises(Unavailable):
        await ipam.allocate("f")
    await ipam.release("b")
    assert await ipam.allocate("f") == ips[1]  # the only free one, after wrapping
    await ipam.release("c")
    await ipam.release("d")
    # The cursor survives a restart: next comes .4 (c's), not a lower one.
    again = Ipam(tmp_path / "ipam.json", NET)
    assert await again.allocate("g") == ips[2]


async def test_drops_addresses_outside_a_changed_subnet(tmp_path):
    path = tmp_path / "ipam.json"
    await Ipam(path, NET).allocate("a")
    moved = Ipam(path, IPv4Network("10.89.201.0/24"))
    assert moved.allocations() == {}
    assert await moved.allocate("a") == IPv4Address("10.89.201.2")
