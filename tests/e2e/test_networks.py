"""User networks end to end (issue 12): real bridges, real containers (busybox), the CLI.

Names resolve through the agent's embedded DNS (busybox `nslookup`, which has its own
resolver: the static busybox's `wget` cannot look names up, see HOST-NOTES); reachability
is an HTTP GET (busybox nc) to the address a name resolved to. "Outside" is a namespace this test makes,
with a busybox httpd behind a veth on a /30 of TEST-NET-2-like 198.18.0.0/15 space.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import uuid

import pytest

from tests.e2e.conftest import skopeo
from tests.support.images import busybox_layout, skopeo_env

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

IMAGE = "dynet/busybox:1"


@pytest.fixture(scope="module")
def st(stack, tmp_path_factory):
    root = tmp_path_factory.mktemp("netimg")
    busybox_layout(root / "layout", root / "work")
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", stack.admin_creds, f"oci:{root / 'layout'}:latest",
           f"docker://{stack.registry_addr}/{IMAGE}", env=skopeo_env(root / "home"))
    yield stack


def _uid() -> str:
    return uuid.uuid4().hex[:6]


@contextlib.contextmanager
def networks(st, *specs: tuple[str, ...]):
    """Create networks (`(name, *flags)`), yield their names; remove them and their containers after."""
    names = []
    containers: list[str] = []
    try:
        for name, *flags in specs:
            st.cli("network", "create", *flags, name)
            names.append(name)
        yield names, containers
    finally:
        if containers:
            st.cli("rm", "-f", *containers, check=False)
        for n in names:
            st.cli("network", "rm", n, check=False)
        left = st.cli("network", "ls", "-q", "--filter", "type=custom").stdout.split()
        for n in names:
            assert st.cli("network", "inspect", n, check=False).returncode != 0, f"{n} left behind ({left})"


def run_d(st, containers: list[str], name: str, network: str, *args: str) -> dict:
    st.cli("run", "-d", "--name", name, "--network", network, *args)
    containers.append(name)
    return json.loads(st.cli("inspect", name).stdout)[0]


def sh(st, network: str, script: str, *flags: str, check: bool = False) -> subprocess.CompletedProcess:
    return st.cli("run", "--rm", "--network", network, *flags, IMAGE, "sh", "-c", script, check=check,
                  timeout=120)


def httpd(st, containers, name, network, *flags) -> str:
    """A busybox httpd serving /etc on 8080; its address on `network`."""
    info = run_d(st, containers, name, network, *flags, IMAGE, "httpd", "-f", "-p", "8080", "-h", "/etc")
    return info["NetworkSettings"]["Networks"][network]["IPAddress"]


def fetch(ip: str, path: str = "/") -> str:
    """A shell snippet that GETs http://IP:8080/PATH and prints the body; non-zero if unreachable.

    busybox nc, not wget: the static busybox's wget crashed (SIGSEGV) on some runs here."""
    return (f"{{ printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080 > /tmp/resp && "
            f"grep -q '^HTTP/1.[01] 200' /tmp/resp && sed '1,/^\\r$/d' /tmp/resp; }}")


def resolved(out: str, name: str) -> list[str]:
    """The addresses busybox nslookup printed for `name`."""
    text = out.split(f"Name:\t{name}\n", 1)[1].split("Server:", 1)[0] if f"Name:\t{name}\n" in out else ""
    return re.findall(r"Address: (\d+\.\d+\.\d+\.\d+)", text)


def test_create_ls_inspect_rm_and_refusals(st):
    n = f"n{_uid()}"
    with networks(st, (n, "--label", "team=a")):
        ls = st.cli("network", "ls").stdout.splitlines()
        assert ls[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE", "HOST"]
        assert any(r.split()[1:3] == [n, "bridge"] for r in ls[1:]), ls
        assert any(r.split()[1] == "bridge" for r in ls[1:]) and any(r.split()[1] == "none" for r in ls[1:])
        info = json.loads(st.cli("network", "inspect", n).stdout)[0]
        subnet = info["IPAM"]["Config"][0]["Subnet"]
        assert subnet.startswith(st.env["DOCKYARD_NETWORK_POOL"].rsplit(".", 1)[0] + ".")
        assert (info["Name"], info["Driver"], info["Internal"], info["Labels"]) == (n, "bridge", False, {"team": "a"})
        bridge = info["Options"]["com.docker.network.bridge.name"]
        assert f" {bridge}:" in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        dup = st.cli("network", "create", n, check=False)
        assert dup.returncode != 0 and "already exists" in dup.stderr
        clash = st.cli("network", "create", "--subnet", subnet, f"x{n}", check=False)
        assert clash.returncode != 0 and "overlaps" in clash.stderr
        bad = st.cli("network", "create", "host", check=False)
        assert bad.returncode != 0 and "pre-defined" in bad.stderr
        assert st.cli("network", "ls", "-q", "--filter", f"name={n}").stdout.split() == [info["Id"][:12]]
        assert st.cli("network", "rm", n).stdout.strip() == n
    assert f" {bridge}:" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert bridge not in subprocess.run(["iptables-save"], capture_output=True, text=True).stdout.upper() + \
        subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    missing = st.cli("network", "rm", n, check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_containers_find_each_other_by_name_and_alias(st):
    n = f"n{_uid()}"
    web = f"web{_uid()}"
    with networks(st, (n,)) as (_, ctrs):
        ip = httpd(st, ctrs, web, n, "--network-alias", "www")
        p = sh(st, n, f"nslookup {web}; nslookup www; cat /etc/resolv.conf; "
                      + fetch("$(nslookup www | sed -n 's/^Address: //p' | tail -1)", "/hostname"))
        assert resolved(p.stdout, web) == [ip], p.stdout + p.stderr
        assert resolved(p.stdout, "www") == [ip], p.stdout
        assert info_hostname(st, web) in p.stdout  # the page came from web itself
        # the short id resolves too, and the network lists both names for it
        net = json.loads(st.cli("network", "inspect", n).stdout)[0]
        (cid, member), = net["Containers"].items()
        assert member["Name"] == web and member["IPv4Address"].split("/")[0] == ip
        p = sh(st, n, f"nslookup {cid[:12]}")
        assert resolved(p.stdout, cid[:12]) == [ip], p.stdout
        busy = st.cli("network", "rm", n, check=False)
        assert busy.returncode != 0 and web in busy.stderr


def info_hostname(st, name: str) -> str:
    return json.loads(st.cli("inspect", name).stdout)[0]["Config"]["Hostname"]


def test_the_default_bridge_does_not_resolve_names(st):
    n = f"n{_uid()}"
    web = f"web{_uid()}"
    with networks(st, (n,)) as (_, ctrs):
        httpd(st, ctrs, web, n)
        gw = st.env["DOCKYARD_SUBNET"].rsplit(".", 1)[0] + ".1"
        p = sh(st, "bridge", f"cat /etc/resolv.conf; nslookup {web} {gw}")
        assert p.returncode != 0 and resolved(p.stdout, web) == [], p.stdout
        assert f"nameserver {gw}" not in p.stdout
        # nor does the user network's DNS answer a container that is not on it
        user_gw = json.loads(st.cli("network", "inspect", n).stdout)[0]["IPAM"]["Config"][0]["Gateway"]
        p = sh(st, "bridge", f"timeout 5 nslookup {web} {user_gw}")
        assert resolved(p.stdout, web) == [], p.stdout


@pytest.fixture
def outside():
    """A namespace beyond the host's forwarding, with an httpd on 198.18.x.2:8080."""
    tag = f"dyo{os.getpid() % 100000}"
    x = os.getpid() % 250
    ns, veth = f"{tag}ns", f"{tag}h"
    host_ip, far_ip = f"198.18.{x}.1", f"198.18.{x}.2"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns], check=True)
        subprocess.run(["ip", "addr", "add", f"{host_ip}/30", "dev", veth], check=True)
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        for cmd in (["addr", "add", f"{far_ip}/30", "dev", "eth0"], ["link", "set", "eth0", "up"],
                    ["link", "set", "lo", "up"], ["route", "add", "default", "via", host_ip]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        www = subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip()
        with open(f"{www}/index.html", "w") as f:
            f.write("outside\n")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "busybox", "httpd", "-f", "-p", "8080", "-h", www])
        yield far_ip
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_internal_network_has_no_way_out(st, outside):
    n, i = f"n{_uid()}", f"i{_uid()}"
    peer = f"peer{_uid()}"
    with networks(st, (n,), (i, "--internal")) as (_, ctrs):
        get = fetch(outside)
        p = sh(st, n, get)  # a normal user network gets out (masqueraded)
        assert p.stdout == "outside\n", p.stdout + p.stderr
        ip = httpd(st, ctrs, peer, i)
        gw = json.loads(st.cli("network", "inspect", i).stdout)[0]["IPAM"]["Config"][0]["Gateway"]
        p = sh(st, i, f"ip route; {get} || echo unreachable; nslookup {peer}")
        assert "default" not in p.stdout and "unreachable" in p.stdout, p.stdout
        assert resolved(p.stdout, peer) == [ip]  # names still resolve inside it
        # Even a container that adds the route itself stays in: the host drops what leaves the network.
        p = sh(st, i, f"ip route add default via {gw} && ip route && {{ {get} || echo unreachable; }}",
               "--cap-add", "NET_ADMIN")
        assert f"default via {gw}" in p.stdout and "unreachable" in p.stdout, p.stdout + p.stderr
        assert "outside" not in p.stdout.replace("unreachable", "")
        assert json.loads(st.cli("network", "inspect", i).stdout)[0]["Internal"] is True


def test_two_user_networks_cannot_reach_each_other(st):
    a, b = f"a{_uid()}", f"b{_uid()}"
    web = f"web{_uid()}"
    with networks(st, (a,), (b,)) as (_, ctrs):
        ip = httpd(st, ctrs, web, a)
        get = fetch(ip, "/hostname")
        assert sh(st, a, get).stdout.strip() == info_hostname(st, web)
        p = sh(st, b, f"{get} || echo unreachable; nslookup {web}")
        assert "unreachable" in p.stdout and resolved(p.stdout, web) == [], p.stdout
        p = sh(st, "bridge", f"{get} || echo unreachable")
        assert "unreachable" in p.stdout, p.stdout


def test_connect_and_disconnect_a_running_container(st):
    a, b = f"a{_uid()}", f"b{_uid()}"
    web, cli = f"web{_uid()}", f"cli{_uid()}"
    with networks(st, (a,), (b,)) as (_, ctrs):
        ip = httpd(st, ctrs, web, a)
        # The client reports, twice a second, whether it reaches web and whether web's name resolves.
        probe = (f"while :; do {fetch(ip, '/hostname')} >/dev/null && r=up || r=down; "
                 f"nslookup {web} >/dev/null 2>&1 && n=named || n=nameless; echo $r $n; sleep 0.3; done")
        run_d(st, ctrs, cli, b, IMAGE, "sh", "-c", probe)

        def settles(want: str) -> None:
            deadline = time.monotonic() + 60  # a hang guard, not a speed requirement
            while time.monotonic() < deadline:
                lines = st.cli("logs", "--tail", "1", cli).stdout.split("\n")
                if lines[0].strip() == want:
                    return
                time.sleep(0.3)
            raise AssertionError(f"{cli} never reported {want!r}: {st.cli('logs', cli).stdout[-500:]}")

        settles("down nameless")
        st.cli("network", "connect", "--alias", "client", a, cli)
        settles("up named")
        members = json.loads(st.cli("network", "inspect", a).stdout)[0]["Containers"]
        assert sorted(m["Name"] for m in members.values()) == sorted([web, cli])
        nets = json.loads(st.cli("inspect", cli).stdout)[0]["NetworkSettings"]["Networks"]
        assert {k: v["Interface"] for k, v in nets.items()} == {b: "eth0", a: "eth1"}
        p = sh(st, a, "nslookup client")
        assert len(resolved(p.stdout, "client")) == 1, p.stdout
        st.cli("network", "disconnect", a, cli)
        settles("down nameless")
        members = json.loads(st.cli("network", "inspect", a).stdout)[0]["Containers"]
        assert [m["Name"] for m in members.values()] == [web]


def test_prune_removes_only_unused_networks(st):
    used, unused = f"u{_uid()}", f"x{_uid()}"
    web = f"web{_uid()}"
    with networks(st, (used,), (unused, "--label", f"t={used}")) as (names, ctrs):
        httpd(st, ctrs, web, used)
        p = st.cli("network", "prune", "-f", "--filter", f"label=t={used}")
        assert p.stdout.splitlines() == ["Deleted Networks:", unused]
        names.remove(unused)
        assert st.cli("network", "inspect", used, check=False).returncode == 0


def test_ports_published_from_a_user_network(st):
    import urllib.request
    n = f"n{_uid()}"
    web = f"web{_uid()}"
    with networks(st, (n,)) as (_, ctrs):
        httpd(st, ctrs, web, n, "-p", "127.0.0.1:0:8080")
        ports = json.loads(st.cli("inspect", web).stdout)[0]["NetworkSettings"]["Ports"]
        port = ports[0]["host_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hostname", timeout=10) as r:
            assert r.read().decode().strip() == info_hostname(st, web)
        # one host, one port space: the default bridge cannot take the same host port
        taken = st.cli("run", "-d", "-p", f"127.0.0.1:{port}:8080", IMAGE, "true", check=False)
        assert taken.returncode != 0 and "already allocated" in taken.stderr, taken.stderr
        st.cli("rm", "-f", web)
        ctrs.remove(web)
        rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        assert f"--dport {port} " not in rules
