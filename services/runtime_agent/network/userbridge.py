"""The Linux bridge of one user network, with docker's isolation and `--internal` rules.

It is the agent's Bridge (address, sysctls, own chains reached by one jump each) with
other rules in its FORWARD chain. Each network's chain decides alone about every packet
that enters or leaves its bridge, so the order in which the networks' jumps sit in
FORWARD does not matter between user networks:

- inside the network: accepted;
- into the network from anywhere else: only replies and published ports (DNAT);
- out of the network: dropped towards this agent's other bridges (the default bridge
  and every user network, whose bridge names share one prefix), else accepted and
  masqueraded; an internal network drops it all and is never masqueraded.

The default bridge's own chain accepts anything leaving it, so a user network's jump is
moved in front of it on every `ensure` (one atomic batch).
"""

from __future__ import annotations

from services.runtime_agent.network import iptables
from services.runtime_agent.network.bridge import Bridge
from services.runtime_agent.network.config import NetworkConfig


class UserBridge(Bridge):
    def __init__(self, config: NetworkConfig, *, internal: bool, siblings: str, default_bridge: str):
        """`siblings`: the interface pattern of this agent's user bridges (`dockyard-+`)."""
        super().__init__(config)
        self.internal = internal
        self.siblings = siblings
        self.default_bridge = default_bridge

    def _static_rules(self) -> dict[str, list[str]]:
        cfg = self.config
        br, net = cfg.bridge, str(cfg.subnet)
        post, fwd = cfg.postrouting_chain, cfg.forward_chain
        c = f"-m comment --comment {iptables.quote(cfg.prefix)}"
        filt = [
            f"-A {fwd} -i {br} -o {br} {c} -j ACCEPT",
            f"-A {fwd} -o {br} -m conntrack --ctstate RELATED,ESTABLISHED {c} -j ACCEPT",
        ]
        nat: list[str] = []
        if self.internal:
            filt += [f"-A {fwd} -o {br} {c} -j DROP", f"-A {fwd} -i {br} {c} -j DROP"]
        else:
            filt += [
                f"-A {fwd} -o {br} -m conntrack --ctstate DNAT {c} -j ACCEPT",
                f"-A {fwd} -o {br} {c} -j DROP",
                f"-A {fwd} -i {br} -o {self.siblings} {c} -j DROP",
                f"-A {fwd} -i {br} -o {self.default_bridge} {c} -j DROP",
                f"-A {fwd} -i {br} {c} -j ACCEPT",
            ]
            nat += [
                f"-A {post} -s {net} ! -o {br} {c} -j MASQUERADE",
                f"-A {post} -s 127.0.0.0/8 -o {br} {c} -j MASQUERADE",
                f"-A {post} -s {net} -o {br} -m conntrack --ctstate DNAT {c} -j MASQUERADE",
            ]
        return {"nat": nat, "filter": filt}

    async def ensure(self) -> None:
        await super().ensure()
        await self._jump_first()

    async def _jump_first(self) -> None:
        """Put this network's FORWARD jump at the top (see the module's docstring)."""
        cfg = self.config
        current = await iptables.save("filter")
        rules = [r for r in current.in_table("filter") if r.chain == "FORWARD"]
        mine = [r for r in rules if r.target == cfg.forward_chain]
        if rules and rules[0].target == cfg.forward_chain and len(mine) == 1:
            return
        tag = f"-m comment --comment {iptables.quote(cfg.prefix)}"
        batch = [f"-D FORWARD {r.spec}" for r in mine] + [f"-I FORWARD 1 {tag} -j {cfg.forward_chain}"]
        await iptables.restore({"filter": batch})
