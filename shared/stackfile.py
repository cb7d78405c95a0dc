"""`DATA_DIR/stack.json`: where the stack `dockyard up` runs for a data dir listens, for its clients."""

from __future__ import annotations

from pathlib import Path

import msgspec

from shared.fsutil import write_atomic

STACK_FILE = "stack.json"


class StackInfo(msgspec.Struct, kw_only=True):
    nats_url: str = ""
    registry: str = ""  # HOST:PORT the registry-gateway listens on
    services: list[str] = []
    pids: dict[str, int] = {}  # service -> pid
    nats_pid: int = 0  # the embedded nats-server; 0 when `up` joined another NATS
    up_pid: int = 0
    agent_id: str = ""  # the runtime-agent `up` runs ("" without one): `down --containers` stops its containers

    def addresses(self) -> dict[str, str]:
        """The Config fields this stack decides (empty ones left out)."""
        return {k: v for k, v in (("nats_url", self.nats_url), ("registry_addr", self.registry)) if v}


def read(data_dir: Path) -> StackInfo | None:
    """The stack of `data_dir`, or None when none was started there (or it stopped)."""
    try:
        return msgspec.json.decode((Path(data_dir) / STACK_FILE).read_bytes(), type=StackInfo)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def write(data_dir: Path, info: StackInfo) -> None:
    write_atomic(Path(data_dir) / STACK_FILE, msgspec.json.encode(info))


def remove(data_dir: Path) -> None:
    (Path(data_dir) / STACK_FILE).unlink(missing_ok=True)
