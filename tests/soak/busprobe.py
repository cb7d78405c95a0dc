"""The soak's own look at containers, over the bus from the test process: the agent's
`inspect` verb without a CLI process per look (polling a container's exit through the
CLI would cost a Python start-up every 200 ms and slow every other client down)."""

from __future__ import annotations

import asyncio
import threading

from shared import bus, subjects
from shared.errors import NotFound
from shared.messages.agent import VERB_INSPECT, Container, ContainerRef, ContainerReply


class BusProbe:
    def __init__(self, nats_url: str, agent_id: str):
        self.agent_id = agent_id
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = self._call(self._connect(nats_url))

    async def _connect(self, url: str) -> bus.BusClient:
        return bus.BusClient(await bus.connect(url, name="soak-probe"))

    def _call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def inspect(self, ref: str) -> Container | None:
        """The agent's record of container `ref`; None when it has none."""
        async def ask() -> Container | None:
            try:
                reply = await self.client.request(subjects.agent(self.agent_id, VERB_INSPECT),
                                                  ContainerRef(container=ref), ContainerReply, timeout=30)
            except NotFound:
                return None
            return reply.container
        return self._call(ask())

    def close(self) -> None:
        try:
            self._call(self.client.nc.drain())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
