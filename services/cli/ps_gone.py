"""`ps -a` of agents that are gone: their last records, from the `dockyard-containers` KV mirror.

An agent that does not answer (stopped by `dockyard down`, crashed, its host lost) cannot
say what its containers do now; docker shows such a container's state as `Unknown`, and so
does `ps` here, under the agent's name in the HOST column.
"""

from __future__ import annotations

import msgspec


async def containers_of_gone_agents(client, answered: set[str]) -> list:
    """The mirrored containers of every agent not in `answered`, their status `unknown`."""
    from shared import codec, subjects
    from shared.messages.agent import Container
    if hasattr(client, "kv_entries"):  # shared.bus_lite: the whole bucket in one round trip
        dec = codec.decoder(Container)
        records = [dec.decode(v) for _, v in await client.kv_entries(subjects.KV_CONTAINERS)]
    else:
        records = await _records_nats(client)
    return [msgspec.structs.replace(c, state=msgspec.structs.replace(c.state, status="unknown", pid=0))
            for c in records if c.host not in answered]


async def _records_nats(client) -> list:
    """The records through nats-py's KV (the full client: TLS or websocket URLs)."""
    import nats.js.errors
    from shared import subjects
    from shared.bus import TypedKV
    from shared.messages.agent import Container
    try:
        kv = await client.nc.jetstream().key_value(subjects.KV_CONTAINERS)
    except nats.js.errors.BucketNotFoundError:
        return []
    return [v for _, v, _ in await TypedKV(kv, Container).items()]
