"""What every command handler gets: configuration, a lazily connected bus, output."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from shared.codec import to_builtins
from shared.config import Config
from shared.errors import Unavailable

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
    """`context` names the stack `config` came from (services.cli.contexts)."""

    def __init__(self, config: Config, *, json_output: bool = False, context: str = "default",
                 loopless: bool = False):
        self.config = config
        self.context = context
        self.json_output = json_output
        # Driven by shared.bus_blocking.drive, not an event loop (services.cli.main).
        self.loopless = loopless
        self._bus: "bus.BusClient | None" = None

    async def bus(self) -> "bus.BusClient":
        """The bus client, connected on first use (commands that need no bus never pay).

        Plain nats:// URLs get shared.bus_lite (shared.bus_blocking for a loopless command),
        which speaks the client protocol itself:
        importing nats-py costs more than a command's whole bus traffic. TLS and
        websocket URLs (or a server that demands TLS) get nats-py through shared.bus.
        """
        if self._bus is None:
            if not self.config.nats_url:
                raise Unavailable(f"no stack is running in {self.config.data_dir} (no stack.json there): "
                                  "start one with `dockyard up`, or give --nats URL")
            self._bus = await (self._blocking_bus() if self.loopless else self._loop_bus())
        return self._bus

    async def _loop_bus(self) -> Any:
        """shared.bus_lite's client, or nats-py's where the lean one cannot go."""
        from shared import bus_lite
        try:
            return await bus_lite.connect(self.config.nats_url, name="dockyard-cli", connect_timeout=3,
                                          creds=self.config.bus_creds, ca=self.config.nats_ca_file)
        except bus_lite.NeedFullClient:
            bus = _import_bus(self.config.nats_url)
            return bus.BusClient(await bus.connect(self.config.nats_url, name="dockyard-cli", connect_timeout=3,
                                                   creds=self.config.bus_creds, ca=self.config.nats_ca_file))

    async def _blocking_bus(self) -> Any:
        """shared.bus_blocking's client; what it cannot serve (TLS without a CA, websockets)
        sends the command back to main to run on an event loop."""
        from shared import bus_blocking
        from shared.nats_wire import NeedFullClient
        try:
            return await bus_blocking.connect(self.config.nats_url, name="dockyard-cli", connect_timeout=3,
                                              creds=self.config.bus_creds, ca=self.config.nats_ca_file)
        except NeedFullClient as e:
            raise bus_blocking.NeedsEventLoop(str(e)) from e

    async def close(self) -> None:
        """The command is done: drain the bus; the process ends right after."""
        if self._bus is not None:
            await self._bus.nc.drain()
            self._bus = None
        # The interpreter's teardown runs a full collection over every object the
        # imports made (~10 ms a command here); in the permanent generation they are
        # not scanned. Nothing is freed early by it: the process is about to exit.
        import gc
        gc.freeze()

    def print_json(self, value: Any) -> None:
        import json  # only the commands that print JSON pay for it
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
