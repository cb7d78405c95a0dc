"""`dockyard status`'s second table: how many copies JetStream keeps of each state bucket."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from shared.permissions import STATE_BUCKETS

_NOT_FOUND = 10059  # JetStream's "stream not found": the bucket is made on first use


class _Cluster(msgspec.Struct):
    name: str = ""
    leader: str = ""
    replicas: list[dict] = []


class _Config(msgspec.Struct):
    num_replicas: int = 1


class _State(msgspec.Struct):
    messages: int = 0
    bytes: int = 0


class _Error(msgspec.Struct):
    err_code: int = 0
    description: str = ""


class _StreamInfo(msgspec.Struct):
    config: _Config = msgspec.field(default_factory=_Config)
    state: _State = msgspec.field(default_factory=_State)
    cluster: _Cluster | None = None
    error: _Error | None = None


async def _one(nc: Any, bucket: str, timeout: float) -> dict[str, Any] | None:
    try:
        msg = await nc.request(f"$JS.API.STREAM.INFO.KV_{bucket}", b"", timeout=timeout)
        info = msgspec.json.decode(msg.data, type=_StreamInfo)
    except Exception as e:  # noqa: BLE001 - no reply, refused, garbled: that bucket's row says so
        return {"bucket": bucket, "replicas": None, "peers": [], "leader": "", "values": None,
                "error": str(e) or type(e).__name__}
    if info.error is not None:
        if info.error.err_code == _NOT_FOUND:
            return None  # not made yet: nothing to replicate
        return {"bucket": bucket, "replicas": None, "peers": [], "leader": "", "values": None,
                "error": info.error.description}
    cluster = info.cluster or _Cluster()
    return {"bucket": bucket, "replicas": info.config.num_replicas, "leader": cluster.leader,
            "peers": [cluster.leader, *(r.get("name", "?") for r in cluster.replicas)] if cluster.leader else [],
            "values": info.state.messages, "error": ""}


async def buckets(nc: Any, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Each existing bucket: its replicas (R1, R3), the servers holding it, its message count."""
    rows = await asyncio.gather(*(_one(nc, b, timeout) for b in STATE_BUCKETS))
    return [r for r in rows if r is not None]


def table_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["bucket"], f"R{r['replicas']}" if r["replicas"] else "?",
             ",".join(r["peers"]) or "-", "-" if r["values"] is None else r["values"],
             r["error"] or ("one copy: lost with the first node's disk" if r["replicas"] == 1 else "")]
            for r in rows]
