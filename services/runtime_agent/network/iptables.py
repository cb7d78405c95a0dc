"""Reading the ruleset (`iptables-save`) and changing it in one atomic batch.

`iptables-restore --noflush` applies a whole table's changes as one transaction:
either every line applies or none does, so a failed batch leaves no half state.
"""

from __future__ import annotations

import asyncio
import shlex
import weakref
from dataclasses import dataclass, field

from services.runtime_agent.network._exec import run

# One agent process changes the ruleset through one batch at a time: concurrent
# nf_tables transactions from one process only race each other. One lock per event
# loop, since an asyncio.Lock may not be shared between loops.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


@dataclass(frozen=True, slots=True)
class Rule:
    table: str
    chain: str
    spec: str  # everything after `-A CHAIN`, as iptables-save prints it

    @property
    def comment(self) -> str | None:
        words = shlex.split(self.spec)
        for i, w in enumerate(words[:-1]):
            if w == "--comment":
                return words[i + 1]
        return None

    @property
    def target(self) -> str | None:
        words = shlex.split(self.spec)
        for i, w in enumerate(words[:-1]):
            if w in ("-j", "--jump"):
                return words[i + 1]
        return None


@dataclass(slots=True)
class Ruleset:
    chains: dict[str, set[str]] = field(default_factory=dict)  # table -> chain names
    rules: list[Rule] = field(default_factory=list)

    def has_chain(self, table: str, chain: str) -> bool:
        return chain in self.chains.get(table, ())

    def in_table(self, table: str) -> list[Rule]:
        return [r for r in self.rules if r.table == table]


def parse_save(text: str) -> Ruleset:
    rs = Ruleset()
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            rs.chains.setdefault(table, set())
        elif line.startswith(":"):
            rs.chains.setdefault(table, set()).add(line[1:].split(None, 1)[0])
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            rs.rules.append(Rule(table, chain, rest[0] if rest else ""))
    return rs


async def save(*tables: str) -> Ruleset:
    if len(tables) == 1:
        return parse_save(await run("iptables-save", "-t", tables[0]))
    text = await run("iptables-save")
    rs = parse_save(text)
    for t in tables:
        rs.chains.setdefault(t, set())
    return rs


def quote(word: str) -> str:
    """Quote a word for iptables-restore, which understands double quotes only."""
    if word and all(c.isalnum() or c in "-_.:/=,+@" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def restore(batch: dict[str, list[str]]) -> None:
    """Apply `{table: [lines]}` atomically, leaving every other rule in place."""
    parts: list[str] = []
    for table, lines in batch.items():
        if lines:
            parts += [f"*{table}", *lines, "COMMIT"]
    if not parts:
        return
    async with _lock():
        await run("iptables-restore", "--noflush", "-w", "5", stdin="\n".join(parts) + "\n")
