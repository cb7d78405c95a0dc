"""The network against the real kernel: bridge, netns, veth, DNAT on 127.0.0.1.

Everything here is named `dynt*` (bridge dynt0, netns dynt-*, chains DYNT-*) on
10.89.77.0/24; traffic goes only to 127.0.0.1 and into the namespaces made here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from services.runtime_agent.network import Network, NetworkConfig, parse_publish, parse_publish_all
from shared.errors import Conflict, InvalidArgument

BRIDGE = "dynt0"
SUBNET = IPv4Network("10.89.77.0/24")
PREFIX = "dynt"
BUSYBOX = "/bin/busybox"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not (shutil.which("ip") and shutil.which("iptables-restore")
                            and os.path.exists(BUSYBOX)), reason="needs iproute2, iptables, busybox"),
]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def netns_names() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()}


def ruleset() -> str:
    return sh("iptables-save")


async def eventually_gone(path: Path, timeout: float = 3.0) -> bool:
    """The kernel destroys an unmounted netns (and its veth pair) asynchronously."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while path.exists():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@contextlib.contextmanager
def reserved_ports(n: int):
    """`n` consecutive tcp ports on 127.0.0.1 that stay ours for the `with`: bound with
    SO_REUSEADDR and never listening, so the kernel hands them to no one else while the
    agent's own probe (SO_REUSEADDR too) still finds them free."""
    while True:
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", socks[0].getsockname()[1] + i if i else 0))
        except OSError:
            for s in socks:
                s.close()
            continue  # the next one up was taken: try another base
        try:
            yield socks[0].getsockname()[1]
        finally:
            for s in socks:
                s.close()
        return


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    cfg = NetworkConfig(state_dir=tmp_path_factory.mktemp("dynt-net"), bridge=BRIDGE,
                        subnet=SUBNET, prefix=PREFIX)
    ip_forward = Path("/proc/sys/net/ipv4/ip_forward")
    forwarding = ip_forward.read_text()  # start() turns it on for the whole host
    asyncio.run(Network(cfg).start())
    yield cfg
    asyncio.run(Network(cfg).close(remove_all=True))  # a no-op after the last test
    ip_forward.write_text(forwarding)


@pytest.fixture
async def net(config):
    n = Network(config)
    await n.start()
    yield n
    for cid in n.attachments():
        await n.teardown(cid)


class Httpd:
    """busybox httpd inside a netns, serving a file `token` with a known body."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []

    def start(self, netns: str, token: str, port: int = 80) -> None:
        www = self.root / f"www-{netns}-{port}"
        www.mkdir()
        (www / "token").write_text(token)
        # `ip netns exec` execs the command: the Popen is httpd itself.
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", netns, BUSYBOX, "httpd", "-f", "-p", f"0.0.0.0:{port}",
             "-h", str(www)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        """Before a teardown: a live process keeps its netns (and veth) alive."""
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs.clear()


@pytest.fixture
def httpd(tmp_path):
    servers = Httpd(tmp_path)
    yield servers
    servers.stop()


async def http_get(port: int, path: str = "/token", timeout: float = 5.0) -> bytes:
    """GET from 127.0.0.1:port, retrying while the server in the netns starts."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
            w.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = await asyncio.wait_for(r.read(), 2)
            w.close()
            if data:
                return data
        except (OSError, asyncio.TimeoutError):
            if loop.time() > deadline:
                raise
        await asyncio.sleep(0.03)


async def get_in(netns: str, ip: IPv4Address, path: str = "/token") -> bytes:
    """GET from inside a netns with busybox nc (busybox wget segfaults on these hosts)."""
    for _ in range(100):
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, BUSYBOX, "nc", "-w", "2", str(ip), "80",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        out, _ = await proc.communicate(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        if proc.returncode == 0 and out:
            return out
        await asyncio.sleep(0.03)
    raise AssertionError(f"{ip} unreachable from {netns}")


async def assert_gone(config: NetworkConfig, cid: str) -> None:
    assert config.netns_name(cid) not in netns_names()
    assert await eventually_gone(Path("/sys/class/net") / config.veth_name(cid)), "veth left"
    assert f"{PREFIX}:{cid}:" not in ruleset()


async def test_published_ports_on_localhost_and_bridge_between_sandboxes(net, config, httpd):
    a = await net.setup("ta", "bridge", parse_publish_all(["127.0.0.1::80", "80"]))
    b = await net.setup("tb", "bridge")
    assert a.netns_path == "/run/netns/dynt-ta" and Path(a.netns_path).exists()
    assert a.ip in SUBNET and b.ip in SUBNET and a.ip != b.ip
    assert a.gateway == b.gateway == IPv4Address("10.89.77.1")
    assert [p.host_ip for p in a.ports] == [IPv4Address("127.0.0.1"), IPv4Address("0.0.0.0")]

    # Inside: lo and eth0 up, the address, a default route via the gateway.
    links = {l["ifname"]: l for l in json.loads(sh("ip", "-n", "dynt-ta", "-j", "addr"))}
    assert set(links) == {"lo", "eth0"}
    assert "UP" in links["lo"]["flags"] and "UP" in links["eth0"]["flags"]
    assert {(x["local"], x["prefixlen"]) for x in links["eth0"]["addr_info"]
            if x["family"] == "inet"} == {(str(a.ip), 24)}
    assert "default via 10.89.77.1 dev eth0" in sh("ip", "-n", "dynt-ta", "route")
    # Host end on the bridge.
    assert f"master {BRIDGE}" in sh("ip", "link", "show", config.veth_name("ta"))

    httpd.start("dynt-ta", "hello from ta")
    httpd.start("dynt-tb", "hello from tb")
    for port in a.ports:  # both the 127.0.0.1 and the all-addresses mapping
        reply = await http_get(port.host_port)
        assert reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n")[0]
        assert reply.endswith(b"hello from ta")
    assert (await get_in("dynt-ta", b.ip)).endswith(b"\r\n\r\nhello from tb")
    assert (await get_in("dynt-tb", a.ip)).endswith(b"\r\n\r\nhello from ta")


async def test_teardown_leaves_nothing_and_is_idempotent(net, config, httpd):
    a = await net.setup("td", "bridge", parse_publish("127.0.0.1::80"))
    port = a.ports[0].host_port
    httpd.start("dynt-td", "td")
    assert (await http_get(port)).endswith(b"td")
    assert f"{PREFIX}:td:" in ruleset()
    httpd.stop()
    await net.teardown("td")
    await assert_gone(config, "td")
    assert net.ipam.get("td") is None and net.get("td") is None
    with pytest.raises(OSError):  # nothing answers on the host port any more
        await http_get(port, timeout=0.2)
    await net.teardown("td")  # a retry after a crash is fine
    await net.teardown("never-set-up")


async def test_none_mode_has_only_loopback(net, config):
    att = await net.setup("tn", "none")
    assert att.ip is None and att.ports == ()
    links = json.loads(sh("ip", "-n", "dynt-tn", "-j", "link"))
    assert [l["ifname"] for l in links] == ["lo"]
    assert "UP" in links[0]["flags"]
    assert net.ipam.get("tn") is None
    await net.teardown("tn")
    await assert_gone(config, "tn")


async def test_host_mode_and_bad_requests(net):
    att = await net.setup("th", "host")
    assert att.netns_path is None and "dynt-th" not in netns_names()
    with pytest.raises(InvalidArgument):
        await net.setup("tx", "none", parse_publish("80"))
    with pytest.raises(InvalidArgument):
        await net.setup("tx", "overlay")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await net.setup("../etc", "none")
    await net.teardown("th")


async def test_host_port_conflicts(net, config):
    with reserved_ports(2) as port, reserved_ports(1) as other:
        await _host_port_conflicts(net, config, port, other)


async def _host_port_conflicts(net, config, port: int, other: int) -> None:
    await net.setup("tc1", "bridge", parse_publish(f"127.0.0.1:{port}:80"))
    # All addresses include 127.0.0.1: the same port there is taken.
    with pytest.raises(Conflict):
        await net.setup("tc2", "bridge", parse_publish(f"{port}:80"))
    # The failed set-up left nothing behind.
    assert "dynt-tc2" not in netns_names() and net.ipam.get("tc2") is None
    assert f"{PREFIX}:tc2:" not in ruleset()
    # Two mappings of one request may not take the same host port either.
    with pytest.raises(Conflict):
        await net.setup("tc3", "bridge", parse_publish_all([f"{other}:80", f"{other}:81"]))
    # A host service listening on the port also makes it taken.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        with pytest.raises(Conflict):
            await net.setup("tc4", "bridge", parse_publish(f"127.0.0.1:{busy}:80"))
    # A range takes its first free port: `port` is ours already.
    att = await net.setup("tc5", "bridge", parse_publish(f"127.0.0.1:{port}-{port + 1}:80"))
    assert att.ports[0].host_port == port + 1
    # udp is a different space.
    att = await net.setup("tc6", "bridge", parse_publish(f"127.0.0.1:{port}:80/udp"))
    assert att.ports[0].host_port == port
    for cid in ("tc1", "tc5", "tc6"):
        await net.teardown(cid)
        await assert_gone(config, cid)


def _listen_as_a_server_would(port: int) -> None:
    """Bind and listen on 127.0.0.1:port with SO_REUSEADDR, as aiohttp and most servers do."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


async def test_a_published_port_stays_held_until_teardown(net, config, httpd):
    # DNAT alone leaves the port free: a server binding it later would find its own
    # loopback clients sent to the container (a test server once got busybox httpd's 404).
    att = await net.setup("th", "bridge", parse_publish_all(["127.0.0.1::80", "80"]))
    for p in att.ports:
        with pytest.raises(OSError) as ei:
            _listen_as_a_server_would(p.host_port)
        assert ei.value.errno == errno.EADDRINUSE
    httpd.start("dynt-th", "held")
    assert (await http_get(att.ports[0].host_port)).endswith(b"held")  # DNAT still takes the traffic
    httpd.stop()
    await net.teardown("th")
    await assert_gone(config, "th")
    for p in att.ports:
        _listen_as_a_server_would(p.host_port)  # free again


async def test_repeated_setup_replaces_rather_than_duplicates(net, config, httpd):
    await net.setup("tr", "bridge", parse_publish("127.0.0.1::80"))
    att = await net.setup("tr", "bridge", parse_publish("127.0.0.1::80"))
    assert ruleset().count(f"{PREFIX}:tr:") == 1
    httpd.start("dynt-tr", "again")
    assert (await http_get(att.ports[0].host_port)).endswith(b"again")


async def test_restore_after_restart(config, httpd):
    first = Network(config)
    await first.start()
    kept = await first.setup("ts-kept", "bridge", parse_publish("127.0.0.1::80"))
    await first.setup("ts-none", "none")
    await first.ipam.allocate("ts-ghost")  # a set-up that died before its netns existed
    gone = await first.setup("ts-gone", "bridge", parse_publish("127.0.0.1::80"))
    sh("ip", "netns", "del", "dynt-ts-gone")  # lost while the agent was down

    second = Network(config)  # the agent restarted
    found = await second.restore()
    assert set(found) == {"ts-kept", "ts-none"}
    assert found["ts-kept"] == kept  # same address, same ports, read back from the kernel
    assert found["ts-none"].mode == "none" and found["ts-none"].ip is None
    assert second.ipam.get("ts-ghost") is None and second.ipam.get("ts-gone") is None
    assert f"{PREFIX}:ts-gone:" not in ruleset()
    assert gone.ip not in second.ipam.allocations().values()
    httpd.start("dynt-ts-kept", "survived")
    assert (await http_get(kept.ports[0].host_port)).endswith(b"survived")

    # The agent's own records say only ts-kept still exists.
    found = await second.restore(keep=["ts-kept"])
    assert set(found) == {"ts-kept"}
    assert "dynt-ts-none" not in netns_names()

    httpd.stop()
    await second.teardown("ts-kept")
    await assert_gone(config, "ts-kept")
    await first.teardown("ts-kept")  # the old instance's stale view: still fine
    await first.teardown("ts-none")


async def test_zz_close_remove_all_cleans_the_host(config):
    net = Network(config)
    await net.start()
    await net.setup("tz1", "bridge", parse_publish("127.0.0.1::80"))
    await net.setup("tz2", "none")
    await net.start()  # again: nothing is added twice
    rules = ruleset()
    assert rules.count("-j DYNT-DNAT") == 2  # from PREROUTING and OUTPUT
    assert rules.count("-j DYNT-POSTROUTING") == 1 and rules.count("-j DYNT-FORWARD") == 1
    assert rules.count("-s 127.0.0.0/8 -o dynt0") == 1
    await net.close(remove_all=True)
    assert BRIDGE not in sh("ip", "-br", "link")
    assert not {n for n in netns_names() if n.startswith(f"{PREFIX}-")}
    rules = ruleset()
    assert "DYNT-" not in rules and f"{PREFIX}:" not in rules
    assert not config.ipam_path.exists()
    for cid in ("tz1", "tz2"):
        await assert_gone(config, cid)
