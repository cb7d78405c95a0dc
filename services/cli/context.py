"""What every command handler gets: configuration, a lazily connected bus, output."""

from __future__ import annotations

import json
import sys
from typing import Any

from shared import bus
from shared.codec import to_builtins
from shared.config import Config


class CliContext:
    def __init__(self, config: Config, *, json_output: bool = False):
        self.config = config
        self.json_output = json_output
        self._nc = None
        self._bus: bus.BusClient | None = None

    async def bus(self) -> bus.BusClient:
        """The bus client, connected on first use (commands that need no bus never pay)."""
        if self._bus is None:
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
