"""The user networks an agent holds and who is on them: one JSON file, rewritten atomically.

A crash leaves the old or the new file. The kernel objects (bridges, chains, veths) are
rebuilt from it on the agent's start (usernet.py); the addresses themselves are each
network's Ipam file.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from shared.errors import Internal
from shared.fsutil import write_atomic
from shared.messages.networks import NetworkRecord


class EndpointState(msgspec.Struct, kw_only=True, frozen=True):
    """One container on one network, as the agent set it up."""

    container_name: str
    names: list[str]  # what the network's DNS answers for it: name, short id, aliases
    aliases: list[str] = []  # as the user gave them
    ip: str
    mac: str
    interface: str  # inside the container
    veth: str  # the host's end, on the bridge


class State(msgspec.Struct, kw_only=True):
    counter: int = 0  # the last bridge number handed out
    networks: list[NetworkRecord] = []
    endpoints: dict[str, dict[str, EndpointState]] = {}  # network id -> container id -> endpoint


_dec = msgspec.json.Decoder(State)


def load(path: Path) -> State:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return State()
    except OSError as e:
        raise Internal(f"cannot read {path}: {e}") from e
    try:
        return _dec.decode(data)
    except msgspec.DecodeError as e:
        raise Internal(f"{path} is damaged: {e}") from e


def save(path: Path, state: State) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, msgspec.json.format(msgspec.json.encode(state)))
