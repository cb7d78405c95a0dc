"""The runtime-agent's metrics: its containers by state, images, memory, read when scraped."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable

from prometheus_client import Gauge

from shared.messages.agent import Heartbeat
from shared.metrics import exposition

# docker's states; a state outside them is still shown (the set stays small either way)
STATES = ("created", "running", "paused", "restarting", "exited", "dead")

CONTAINERS = Gauge("dockyard_agent_containers", "Containers on the agent, by state", ["agent", "state"])
IMAGES = Gauge("dockyard_agent_images", "Images stored on the agent", ["agent"])
MEMORY_FREE = Gauge("dockyard_agent_memory_free_bytes", "Memory not yet promised to running containers", ["agent"])
MEMORY_TOTAL = Gauge("dockyard_agent_memory_bytes", "Memory offered to containers", ["agent"])


def watch(agent_id: str, states: Callable[[], list[str]], heartbeat: Callable[[], Heartbeat]) -> None:
    """Read the agent's containers (`states`: one status per container) on every scrape."""
    async def refresh() -> None:
        counts = Tally(states())
        for state in {*STATES, *counts}:
            CONTAINERS.labels(agent_id, state).set(counts.get(state, 0))
        beat = heartbeat()
        IMAGES.labels(agent_id).set(beat.images)
        MEMORY_FREE.labels(agent_id).set(beat.memory_free)
        MEMORY_TOTAL.labels(agent_id).set(beat.memory_total)
    exposition.on_scrape(refresh)
