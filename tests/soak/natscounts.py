"""What the stack's nats-server holds, as it says itself: its `$SYS.REQ.SERVER.PING.*`
answers (connz, subsz, jsz), asked with a user of the system account signed here
from the stack's own keys (the embedded server has no monitoring port, and must not get
one: it would answer anyone).

A service or the CLI that makes a subscription, a KV watcher or an ephemeral consumer per
request and never removes it shows here as a count that grows with the soak."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

from shared import credentials

SYS_CREDS = "soak-sys.creds"


def sys_creds(data_dir: Path) -> Path:
    """A credential of the system account (once per stack), for the server's own requests."""
    import nkeys
    path = data_dir / SYS_CREDS
    if not path.exists():
        authority = credentials.Authority(credentials.credentials_dir(data_dir))
        user = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
        claims = {"name": "soak-sys", "sub": user.public_key.decode(), "nats": {
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}}
        jwt = credentials.encode_jwt(claims, authority.sys)
        credentials.write_secret(path, credentials.format_creds(jwt, bytes(user.seed)).encode())
    return path


async def _ask(url: str, creds: Path) -> dict[str, dict]:
    import nats
    nc = await nats.connect(url, user_credentials=str(creds), name="soak-sys", connect_timeout=5,
                            allow_reconnect=False)
    try:
        async def one(what: str, opts: dict) -> dict:
            msg = await nc.request(f"$SYS.REQ.SERVER.PING.{what}", json.dumps(opts).encode(), timeout=10)
            reply = json.loads(msg.data)
            assert "error" not in reply, (what, reply)
            return reply["data"]
        return {
            "connz": await one("CONNZ", {"subscriptions": True, "limit": 1024}),
            "subsz": await one("SUBSZ", {"subscriptions": True, "limit": 100000}),
            "jsz": await one("JSZ", {"accounts": True, "streams": True, "consumer": True, "config": True}),
        }
    finally:
        await nc.close()


def snapshot(url: str, data_dir: Path) -> dict[str, dict]:
    """The server's own answers, whole (for a report of what grew)."""
    return asyncio.run(_ask(url, sys_creds(data_dir)))


def _stacks(name: str) -> bool:
    # the probes of the test itself (soak-probe, soak-counts, soak-sys) are not the stack's
    return not name.startswith("soak-")


def counts(snap: dict[str, dict]) -> dict[str, int]:
    """The numbers that must come back: the stack's connections and their subscriptions, every
    subscription the server holds, JetStream consumers and streams, and the messages of every
    stream but the containers' bucket (counted on its own: its purge markers expire late)."""
    conns = [c for c in snap["connz"].get("connections") or [] if _stacks(c.get("name", ""))]
    streams = [s for a in snap["jsz"].get("account_details") or [] for s in a.get("stream_detail") or []]
    return {
        "nats_conns": len(conns),
        "nats_conn_subs": sum(c.get("subscriptions", 0) for c in conns),
        "nats_subs": snap["subsz"]["num_subscriptions"],
        "js_consumers": sum(s["state"].get("consumer_count", 0) for s in streams),
        "js_streams": len(streams),
        "js_messages": sum(s["state"]["messages"] for s in streams if s["name"] != "KV_dockyard-containers"),
    }


def live_heap_mb(log: Path) -> int | None:
    """The Go heap nats-server kept live after its last GC (MB), from its `GODEBUG=gctrace=1`
    lines; None without them."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    found = re.findall(r"^gc \d+ @.* \d+->\d+->(\d+) MB", text, re.M)
    return int(found[-1]) if found else None
