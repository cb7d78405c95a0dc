"""`ps -a` of agents that are gone: their last records, from the `dockyard-containers` KV mirror.

An agent that does not answer (stopped by `dockyard down`, crashed, its host lost) cannot
say what its containers do now; docker shows such a container's state as `Unknown`, and so
does `ps` here, under the agent's name in the HOST column.
"""

from __future__ import annotations

import msgspec


async def containers_of_gone_agents(client, answered: set[str]) -> list:
    """The mirrored containers of every agent not in `answered`, their status `unknown`."""
    from services.cli.kv_values import kv_values
    from shared import subjects
    from shared.messages.agent import Container
    records = await kv_values(client, subjects.KV_CONTAINERS, Container)
    return [msgspec.structs.replace(c, state=msgspec.structs.replace(c.state, status="unknown", pid=0))
            for c in records if c.host not in answered]
