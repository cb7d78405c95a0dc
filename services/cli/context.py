"""What every command handler gets: configuration, a lazily connected bus, output."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from shared.codec import to_builtins
from shared.config import Config

if TYPE_CHECKING:
    from shared import bus


def _import_bus(nats_url: str) -> Any:
    """shared.bus, imported without aiohttp unless something already needs it.

    nats-py imports aiohttp only for websocket transports, and that import is half of
    the CLI's start-up time; `dockyard ps` over nats:// should not pay for it.
    """
    if "aiohttp" in sys.modules or nats_url.startswith(("ws://", "wss://")):
        from shared import bus
        return bus
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # makes nats' optional import fail
    try:
        from shared import bus
        return bus
    finally:
        del sys.modules["aiohttp"]


class CliContext:
    def __init__(self, config: Config, *, json_output: bool = False):
        self.config = config
        self.json_output = json_output
        self._nc = None
        self._bus: "bus.BusClient | None" = None

    async def bus(self) -> "bus.BusClient":
        """The bus client, connected on first use (commands that need no bus never pay)."""
        if self._bus is None:
            bus = _import_bus(self.config.nats_url)
            self._nc = await bus.connect(self.config.nats_url, name="dockyard-cli", connect_timeout=3)
            self._bus = bus.BusClient(self._nc)
        return self._bus

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.drain()
            self._nc = None
            self._bus = None

    def print_json(self, value: Any) -> None:
        json.dump(to_builtins(value), sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")

    def print_table(self, headers: list[str], rows: list[list[Any]]) -> None:
        """docker-style columns: left-aligned, three spaces apart."""
        cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        for r in cells:
            sys.stdout.write("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")

    @staticmethod
    def error(message: str) -> None:
        sys.stderr.write(f"dockyard: {message}\n")
