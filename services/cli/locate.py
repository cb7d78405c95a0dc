"""Which agent: the fleet's heartbeats, placement of a new container, the one holding a container.

The CLI talks to the bus only: the heartbeats (KV `dockyard-agents`) for placement and
`agents`, a scatter-gather `ps` to find which agent holds a container; the command then
asks that agent's own verb, so every verb works the same on every host of the fleet.
"""

from __future__ import annotations

import time


async def fleet(ctx) -> list:
    """Live agents from their heartbeats, freshest first (lost ones left out)."""
    from shared.messages.agent import is_lost
    now = time.time()
    return [b for b in await heartbeats(ctx) if not is_lost(b, now)]


async def heartbeats(ctx) -> list:
    """Every agent's last heartbeat, live or lost, freshest first."""
    from services.cli.kv_values import kv_values
    from shared import subjects
    from shared.messages.agent import Heartbeat
    beats = await kv_values(await ctx.bus(), subjects.KV_AGENTS, Heartbeat)
    return sorted(beats, key=lambda b: -b.time)


async def place(ctx, image: str, memory: int | None, pin: str | None) -> str:
    """The agent to run on (shared.placement); the agents' image lists are asked for only on a tie."""
    import dataclasses
    from shared import placement
    from shared.messages.agent import VERB_IMAGES, ImagesReply, ImagesRequest, fleet as fleet_subject
    now = time.time()
    hosts = [placement.Host.from_heartbeat(b, now) for b in await heartbeats(ctx)]
    wanted: frozenset[str] = frozenset()
    if not pin and len(placement.contenders(hosts, memory)) > 1:
        client = await ctx.bus()
        live = sum(not h.lost for h in hosts)
        replies = await client.gather(fleet_subject(VERB_IMAGES), ImagesRequest(), ImagesReply,
                                      timeout=1.0, expect=live)
        wanted, held = placement.locality(image, replies)
        hosts = [dataclasses.replace(h, layers=held.get(h.id, frozenset())) for h in hosts]
    return placement.choose(hosts, memory, wanted=wanted, pin=pin).id


async def find(ctx, ref: str, agents: list | None = None):
    """(agent id, Container) of the one container `ref` names across the fleet."""
    from shared.errors import NotFound
    from shared.messages.agent import VERB_PS, PsReply, PsRequest, fleet as fleet_subject
    agents = await fleet(ctx) if agents is None else agents
    if not agents:
        raise NotFound(f"no such container: {ref} (no runtime-agent is running)")
    client = await ctx.bus()
    replies = await client.gather(fleet_subject(VERB_PS), PsRequest(all=True, match=ref), PsReply,
                                  timeout=2.0, expect=len(agents))
    return one_of(ref, [(r.host, c) for r in replies for c in r.containers])


def one_of(ref: str, hits: list, key=None):
    """The one (agent id, x) of `hits` that `ref` names: an exact id or name before a prefix;
    `key(x)` has the container's `.id` and `.name` (default: x itself)."""
    from shared.errors import InvalidArgument, NotFound
    key = key or (lambda x: x)
    exact = [h for h in hits if ref in (key(h[1]).id, key(h[1]).name)]
    hits = exact or hits
    if not hits:
        raise NotFound(f"no such container: {ref}")
    if len(hits) > 1:
        raise InvalidArgument(f"{ref} names {len(hits)} containers: "
                              + ", ".join(f"{key(x).id[:12]} on {h}" for h, x in hits))
    return hits[0]


async def agent_images(ctx, host: str) -> list:
    """The images an agent has pulled (for `dockyard images --host AGENT`): ImageRecords."""
    from shared import subjects
    from shared.messages.agent import VERB_IMAGES, ImagesReply, ImagesRequest
    client = await ctx.bus()
    reply = await client.request(subjects.agent(host, VERB_IMAGES), ImagesRequest(), ImagesReply)
    return reply.images
