"""shared.placement: hosts (free memory, layers, lost) and a request -> the chosen host or the error."""

from __future__ import annotations

import pytest

from shared.errors import NotFound, Unavailable
from shared.messages.agent import HEARTBEAT_STALE, Heartbeat, ImageRecord, ImagesReply
from shared.placement import Host, choose, contenders, is_lost, locality

MiB = 1 << 20
GiB = 1 << 30
BASE, APP = "sha256:" + "b" * 64, "sha256:" + "a" * 64  # diff ids


def h(id: str, free: int, *, lost: bool = False, layers: tuple[str, ...] = ()) -> Host:
    return Host(id=id, memory_free=free, lost=lost, idle_for=12.0 if lost else 1.0, layers=frozenset(layers))


# (hosts, memory asked, image layers, --host, the host chosen or the error's class and text)
CASES = [
    ("most free memory wins", [h("a", 1 * GiB), h("b", 4 * GiB), h("c", 2 * GiB)], None, (), None, "b"),
    ("most free that fits", [h("a", 1 * GiB), h("b", 4 * GiB)], 3 * GiB, (), None, "b"),
    ("a lost host is never chosen, however roomy",
     [h("a", 1 * GiB), h("b", 64 * GiB, lost=True)], None, (), None, "a"),
    ("equal hosts: the same one every time (agent id)", [h("a", 2 * GiB), h("b", 2 * GiB)], None, (), None, "b"),
    ("a tie goes to the host with the layers",
     [h("a", 2 * GiB, layers=(BASE, APP)), h("b", 2 * GiB)], None, (BASE, APP), None, "a"),
    ("free memory within the band is a tie",
     [h("a", 1950 * MiB, layers=(BASE,)), h("b", 2 * GiB)], None, (BASE,), None, "a"),
    ("more of the image's layers wins the tie",
     [h("a", 2 * GiB, layers=(BASE,)), h("b", 2 * GiB, layers=(BASE, APP)), h("c", 2 * GiB)],
     None, (BASE, APP), None, "b"),
    ("locality does not beat clearly more free memory",
     [h("a", 1 * GiB, layers=(BASE, APP)), h("b", 4 * GiB)], None, (BASE, APP), None, "b"),
    ("locality never picks a host that does not fit",
     [h("a", 1 * GiB, layers=(BASE, APP)), h("b", 1 * GiB + 300 * MiB)], 1100 * MiB, (BASE, APP), None, "b"),
    ("layers of a lost host do not count",
     [h("a", 2 * GiB, lost=True, layers=(BASE, APP)), h("b", 2 * GiB)], None, (BASE, APP), None, "b"),
    ("--host pins, even to the smaller host", [h("a", 1 * GiB), h("b", 4 * GiB)], 512 * MiB, (), "a", "a"),
    ("nothing fits: the request and the largest host",
     [h("a", 1 * GiB), h("b", 4 * GiB), h("c", 8 * GiB, lost=True)], 5 * GiB, (), None,
     (Unavailable, "no host has 5120 MiB free (largest: 4096 MiB on b)")),
    ("an odd size is rounded up, free memory down",
     [h("a", 100 * MiB + 5)], 100 * MiB + 10, (), None, (Unavailable, "no host has 101 MiB free (largest: 100 MiB on a)")),
    ("no agent at all", [], None, (), None, (Unavailable, "no runtime-agent is running (see `dockyard agents`)")),
    ("every agent lost", [h("b", GiB, lost=True), h("a", GiB, lost=True)], None, (), None,
     (Unavailable, "no runtime-agent is running (see `dockyard agents`); lost: a, b")),
    ("--host of a lost host", [h("a", GiB), h("b", GiB, lost=True)], None, (), "b",
     (Unavailable, "host b is lost: no heartbeat for 12 s")),
    ("--host of no host", [h("a", GiB)], None, (), "zz", (NotFound, "no such host 'zz' (see `dockyard agents`)")),
    ("--host without room", [h("a", GiB)], 2 * GiB, (), "a",
     (Unavailable, "host a has 1024 MiB free, the container asks for 2048 MiB")),
]


@pytest.mark.parametrize("hosts, memory, layers, pin, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_choose(hosts, memory, layers, pin, expected):
    if isinstance(expected, str):
        assert choose(hosts, memory, wanted=frozenset(layers), pin=pin).id == expected
    else:
        cls, text = expected
        with pytest.raises(cls) as e:
            choose(hosts, memory, wanted=frozenset(layers), pin=pin)
        assert e.value.message == text


def test_only_tied_hosts_contend():
    """The CLI asks the agents for their images only when more than one host contends."""
    assert [x.id for x in contenders([h("a", GiB), h("b", 4 * GiB)], None)] == ["b"]
    assert {x.id for x in contenders([h("a", 3900 * MiB), h("b", 4 * GiB), h("c", GiB)], None)} == {"a", "b"}


def test_a_heartbeat_older_than_stale_is_lost():
    beat = Heartbeat(agent_id="a", address="h", memory_free=GiB, time=1000.0)
    assert not is_lost(beat, 1000.0 + HEARTBEAT_STALE - 0.1)
    assert is_lost(beat, 1000.0 + HEARTBEAT_STALE)
    host = Host.from_heartbeat(beat, 1000.0 + 30)
    assert (host.id, host.memory_free, host.lost, host.idle_for) == ("a", GiB, True, 30.0)


def record(digest: str, refs: list[str], layers: list[str]) -> ImageRecord:
    return ImageRecord(digest=digest, references=refs, diff_ids=layers)


def test_locality_finds_the_image_layers_on_any_host_and_what_each_holds():
    other = "sha256:" + "c" * 64
    replies = [
        ImagesReply(host="a", images=[record("sha256:" + "1" * 64, ["10.0.0.1:5000/library/busybox:latest"],
                                             [BASE, APP])]),
        ImagesReply(host="b", images=[record("sha256:" + "2" * 64, ["10.0.0.1:5000/library/alpine:3"],
                                             [BASE, other])]),
        ImagesReply(host="c"),
    ]
    wanted, held = locality("busybox", replies)
    assert wanted == {BASE, APP}
    assert held == {"a": {BASE, APP}, "b": {BASE, other}, "c": frozenset()}
    assert locality("busybox:latest", replies)[0] == {BASE, APP}
    assert locality("10.0.0.1:5000/library/busybox", replies)[0] == {BASE, APP}
    assert locality("busybox@sha256:" + "1" * 64, replies)[0] == {BASE, APP}
    for absent in ("busybox:1.36", "other.example:5000/library/busybox", "nginx", "Not A Reference"):
        assert locality(absent, replies)[0] == frozenset()


async def test_a_bucket_of_an_older_agent_is_made_to_keep_lost_hosts(nc):
    """Before lost hosts were kept, the bucket dropped a silent host's entry after 6 s."""
    from nats.js.api import KeyValueConfig
    from nats.js.errors import BadRequestError

    from services.runtime_agent.heartbeat import open_bucket
    from shared import subjects
    from shared.messages.agent import HEARTBEAT_TTL
    js, stream = nc.jetstream(), f"KV_{subjects.KV_AGENTS}"
    try:
        await js.create_key_value(KeyValueConfig(bucket=subjects.KV_AGENTS, ttl=6.0))
    except BadRequestError:  # an earlier test's agents made it: give it the old age
        # (and the old duplicates window: the server refuses one longer than the max age)
        await js.update_stream((await js.stream_info(stream)).config, max_age=6.0, duplicate_window=6.0)
    assert (await js.stream_info(stream)).config.max_age == 6.0
    kv = await open_bucket(nc)
    assert (await js.stream_info(stream)).config.max_age == HEARTBEAT_TTL
    beat = Heartbeat(agent_id="dypl-old", address="h", time=1.0)
    await kv.put("dypl-old", beat)
    assert (await kv.get("dypl-old"))[0] == beat
    await kv.delete("dypl-old")
