"""The /etc files a container gets: docker's hosts layout, resolv.conf without loopback servers."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from services.runtime_agent.containers import etcfiles
from shared.errors import InvalidArgument

HOST = "search corp.example\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\noptions edns0\n"


def test_loopback_nameservers_are_dropped_the_rest_kept():
    out = etcfiles.resolv_conf_content(HOST)
    assert out == "nameserver 10.0.0.2\nsearch corp.example\noptions edns0\n"


def test_only_loopback_falls_back_to_resolved_upstream_then_public_defaults():
    stub = "nameserver 127.0.0.53\nsearch lan\n"
    upstream = "nameserver 192.168.1.1\nsearch lan\n"
    assert etcfiles.resolv_conf_content(stub, upstream_text=upstream) == "nameserver 192.168.1.1\nsearch lan\n"
    assert etcfiles.resolv_conf_content(stub) == "nameserver 8.8.8.8\nnameserver 8.8.4.4\nsearch lan\n"


def test_network_none_gets_no_nameserver():
    assert "nameserver" not in etcfiles.resolv_conf_content(HOST, with_nameservers=False)


def test_hosts_names_the_container_at_its_address():
    lines = etcfiles.hosts_content("abc123", IPv4Address("10.88.0.5")).splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost" and lines[-1] == "10.88.0.5\tabc123"
    assert "abc123" not in etcfiles.hosts_content("abc123", None)


def test_write_makes_three_readonly_mounts(tmp_path):
    files = etcfiles.write(tmp_path / "etc", hostname="web", mode="bridge", ip=IPv4Address("10.88.0.7"))
    assert files.hostname.read_text() == "web\n"
    assert "10.88.0.7\tweb\n" in files.hosts.read_text()
    mounts = files.mounts()
    assert [m.destination for m in mounts] == ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
    assert all(m.readonly and m.source.startswith(str(tmp_path)) for m in mounts)


@pytest.mark.parametrize("name", ["", "-web", "web-", "a_b", "x" * 65, "a..b", "web/1"])
def test_bad_hostnames_are_refused(name):
    with pytest.raises(InvalidArgument):
        etcfiles.check_hostname(name)


def test_good_hostnames_pass():
    assert etcfiles.check_hostname("web-1.example") == "web-1.example"
