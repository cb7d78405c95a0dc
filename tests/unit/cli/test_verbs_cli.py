"""The verbs' client-side parsing and formatting (issue 11): docker's shapes."""

from __future__ import annotations

import pytest

from services.cli.commands import copy, events, verbs
from shared.errors import InvalidArgument, NotFound
from shared.messages.agent import Container, ContainerConfig, NetworkInfo, Port
from shared.messages.verbs import ContainerEvent, Stats


def test_event_times_filters_and_lines():
    now = 1_800_000_000.0
    assert events.parse_time("1700000000.5", now) == 1700000000.5
    assert events.parse_time("10m", now) == now - 600
    assert events.parse_time("1h30m", now) == now - 5400
    assert events.parse_time("2027-01-01T00:00:00Z", now) == 1798761600.0
    assert events.parse_time("2027-01-01", now) == 1798761600.0
    with pytest.raises(InvalidArgument):
        events.parse_time("yesterday", now)
    ev = ContainerEvent(action="die", id="a" * 64, image="busybox", name="web", host="h1",
                        time_nano=1_798_761_600_123_456_789, attributes={"name": "web", "image": "busybox",
                                                                         "exitCode": "3"})
    f = events.parse_filters(["type=container", "event=die", "event=start", "container=web"])
    assert events.matches(ev, f)
    assert not events.matches(ev, events.parse_filters(["event=start"]))
    assert events.matches(ev, events.parse_filters(["container=aaaa", "host=h1", "image=busybox"]))
    with pytest.raises(InvalidArgument):
        events.parse_filters(["colour=red"])
    assert events.text_line(ev) == ("2027-01-01T00:00:00.123456789Z container die " + "a" * 64
                                    + " (exitCode=3, image=busybox, name=web)")
    j = events.docker_json(ev)
    assert (j["status"], j["from"], j["Actor"]["ID"], j["time"]) == ("die", "busybox", "a" * 64, 1798761600)
    assert events.render(ev, "{{.Action}} {{.Actor.ID}}") == "die " + "a" * 64


def test_stats_row_is_dockers():
    pre = Stats(id="b" * 64, name="web", read=0, cpu_ns=1_000_000_000, system_ns=10_000_000_000, online_cpus=2)
    cur = Stats(id="b" * 64, name="web", read=1, cpu_ns=1_500_000_000, system_ns=12_000_000_000, online_cpus=2,
                memory_usage=3 * 1024 * 1024, memory_limit=256 * 1024 * 1024, net_rx=1234, net_tx=56,
                block_read=4_096_000, block_write=0, pids=3)
    row = verbs.stats_row("web", pre, cur)
    assert row["CPUPerc"] == "50.00%"
    assert row["MemUsage"] == "3MiB / 256MiB" and row["MemPerc"] == "1.17%"
    assert (row["NetIO"], row["BlockIO"], row["PIDs"], row["ID"]) == ("1.234kB / 56B", "4.096MB / 0B", "3", "b" * 12)


def test_port_lines_and_container_arguments():
    c = Container(id="c" * 64, name="p", host="h", created="", config=ContainerConfig(image="x"),
                  network=NetworkInfo(ports=[Port(host_ip="0.0.0.0", host_port=8080, container_port=80),
                                             Port(host_ip="0.0.0.0", host_port=5353, container_port=53,
                                                  protocol="udp")]))
    assert verbs.port_lines(c, None) == ["53/udp -> 0.0.0.0:5353", "80/tcp -> 0.0.0.0:8080"]
    assert verbs.port_lines(c, "80") == ["0.0.0.0:8080"]
    with pytest.raises(NotFound):
        verbs.port_lines(c, "53")  # tcp by default
    assert copy.split_container("web:/etc") == ("web", "/etc")
    assert copy.split_container("web:") == ("web", "/")
    assert copy.split_container("./web:x") is None and copy.split_container("/a:b") is None
    assert copy.split_container("dir/web:x") is None and copy.split_container("plain") is None
