"""The agent's bridge, its gateway address, sysctls and the subnet's netfilter chains.

Own chains (like docker's DOCKER / DOCKER-POSTROUTING), each reached by one jump
from a built-in chain, keep this network's rules apart from everyone else's:
removing them all is "drop the jumps, flush and delete the chains".
"""

from __future__ import annotations

import json
from pathlib import Path

from services.runtime_agent.network import iptables
from services.runtime_agent.network._exec import CommandFailed, ip_batch, run
from services.runtime_agent.network.config import NetworkConfig

_SYS_NET = Path("/sys/class/net")


def link_exists(name: str) -> bool:
    return (_SYS_NET / name).exists()


def _write_sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key.replace(".", "/")
    if path.read_text().strip() != value:
        path.write_text(value)


class Bridge:
    def __init__(self, config: NetworkConfig):
        self.config = config

    async def ensure(self) -> None:
        """Make the bridge, its address, sysctls and chains exist; safe to repeat."""
        await self._ensure_link()
        # route_localnet lets packets from 127.0.0.1 (DNATed in OUTPUT) be routed
        # out of the bridge at all; ip_forward routes the containers' traffic.
        _write_sysctl(f"net.ipv4.conf.{self.config.bridge}.route_localnet", "1")
        _write_sysctl("net.ipv4.ip_forward", "1")
        await self._ensure_chains()

    async def _ensure_link(self) -> None:
        cfg = self.config
        if not link_exists(cfg.bridge):
            try:
                await ip_batch([
                    f"link add {cfg.bridge} address {cfg.bridge_mac} type bridge",
                    f"addr add {cfg.gateway_interface} dev {cfg.bridge}",
                    f"link set {cfg.bridge} up",
                ])
                return
            except CommandFailed:
                # Another agent start may have raced us to it; check what is there.
                if not link_exists(cfg.bridge):
                    raise
        shown = json.loads(await run("ip", "-j", "addr", "show", "dev", cfg.bridge))
        addrs = {
            f"{a['local']}/{a['prefixlen']}"
            for link in shown for a in link.get("addr_info", ()) if a.get("family") == "inet"
        }
        lines = [] if str(cfg.gateway_interface) in addrs else [
            f"addr add {cfg.gateway_interface} dev {cfg.bridge}"
        ]
        if not shown or "UP" not in shown[0].get("flags", ()):
            lines.append(f"link set {cfg.bridge} up")
        await ip_batch(lines)

    def _static_rules(self) -> dict[str, list[str]]:
        cfg = self.config
        br, net, tag = cfg.bridge, str(cfg.subnet), iptables.quote(cfg.prefix)
        post, fwd = cfg.postrouting_chain, cfg.forward_chain
        c = f"-m comment --comment {tag}"
        return {
            "nat": [
                # The containers' own traffic to the outside leaves as the host.
                f"-A {post} -s {net} ! -o {br} {c} -j MASQUERADE",
                # 127.0.0.1:HOSTPORT DNATed to a container: without this the reply
                # would go to the container's own loopback.
                f"-A {post} -s 127.0.0.0/8 -o {br} {c} -j MASQUERADE",
                # Hairpin: a container reaching a published port of a neighbour
                # through the host must see the reply come back through the host.
                f"-A {post} -s {net} -o {br} -m conntrack --ctstate DNAT {c} -j MASQUERADE",
            ],
            "filter": [
                # Hosts whose FORWARD policy is DROP (docker sets that) still let
                # container traffic and published ports through.
                f"-A {fwd} -o {br} -m conntrack --ctstate RELATED,ESTABLISHED {c} -j ACCEPT",
                f"-A {fwd} -o {br} -m conntrack --ctstate DNAT {c} -j ACCEPT",
                f"-A {fwd} -i {br} {c} -j ACCEPT",
            ],
        }

    def _jumps(self) -> list[tuple[str, str, str, str]]:
        """(table, built-in chain, match, our chain) for each jump into our chains."""
        cfg = self.config
        local = "-m addrtype --dst-type LOCAL"
        return [
            ("nat", "PREROUTING", local, cfg.dnat_chain),
            ("nat", "OUTPUT", local, cfg.dnat_chain),
            ("nat", "POSTROUTING", "", cfg.postrouting_chain),
            ("filter", "FORWARD", "", cfg.forward_chain),
        ]

    async def _ensure_chains(self) -> None:
        cfg = self.config
        current = await iptables.save("nat", "filter")
        batch: dict[str, list[str]] = {"nat": [], "filter": []}
        for table, chain in (("nat", cfg.dnat_chain), ("nat", cfg.postrouting_chain),
                             ("filter", cfg.forward_chain)):
            if not current.has_chain(table, chain):
                batch[table].append(f":{chain} - [0:0]")
        # The static chains are rewritten whole, so a changed subnet or an older
        # agent's rules never linger; the DNAT chain holds the containers' rules.
        batch["nat"].append(f"-F {cfg.postrouting_chain}")
        batch["filter"].append(f"-F {cfg.forward_chain}")
        for table, lines in self._static_rules().items():
            batch[table] += lines
        tag = f"-m comment --comment {iptables.quote(cfg.prefix)}"
        for table, builtin, match, chain in self._jumps():
            present = any(r.chain == builtin and r.target == chain for r in current.in_table(table))
            if not present:
                # Insert first: our chains must see packets before a DROP rule of
                # another tool ends their walk.
                batch[table].append(" ".join(w for w in (f"-I {builtin} 1", match, tag, f"-j {chain}") if w))
        await iptables.restore(batch)

    async def teardown(self) -> None:
        """Remove the chains, the jumps into them and the bridge; safe to repeat."""
        cfg = self.config
        ours = {cfg.dnat_chain, cfg.postrouting_chain, cfg.forward_chain}
        current = await iptables.save("nat", "filter")
        batch: dict[str, list[str]] = {"nat": [], "filter": []}
        for rule in current.rules:
            if rule.target in ours and rule.chain not in ours:
                batch[rule.table].append(f"-D {rule.chain} {rule.spec}")
        for table in batch:
            mine = sorted(ours & current.chains.get(table, set()))
            batch[table] += [f"-F {c}" for c in mine] + [f"-X {c}" for c in mine]
        await iptables.restore(batch)
        if link_exists(cfg.bridge):
            try:
                await ip_batch([f"link del {cfg.bridge}"])
            except CommandFailed:
                if link_exists(cfg.bridge):
                    raise
