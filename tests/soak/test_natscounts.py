"""The soak's count of what nats-server holds sees what a leaking client would leave: a KV
watcher (an ephemeral consumer and its subscription) and a plain subscription, until
they are released (nats-py's own `stop` leaves the consumer on the server: shared/jsconsumer)."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared import jsconsumer
from shared.natsserver import EmbeddedNats
from tests.soak import natscounts
from tests.soak.conftest import server_files


@pytest.fixture
def server(tmp_path):
    conf, creds = server_files(tmp_path, "leaky")
    with EmbeddedNats(tmp_path / "nats", config_file=conf) as nats:
        yield nats.url, tmp_path, str(creds)


def settled(url, data_dir, want: dict[str, int], timeout: float = 10.0) -> dict[str, int]:
    """The counts once the keys of `want` have those values (the server updates its own late)."""
    deadline = time.monotonic() + timeout
    while True:
        now = natscounts.counts(natscounts.snapshot(url, data_dir))
        if all(now[k] == v for k, v in want.items()) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def test_a_watcher_and_a_subscription_left_behind_are_counted(server):
    url, data_dir, creds = server
    import nats

    async def main() -> None:
        nc = await nats.connect(url, user_credentials=creds, name="leaky")
        try:
            js = nc.jetstream()
            kv = await js.create_key_value(bucket="counted")
            await kv.put("k", b"v")
            before = await asyncio.to_thread(settled, url, data_dir, {"nats_conns": 1})
            assert before["js_streams"] == 1 and before["js_messages"] == 1, before

            watcher = await kv.watchall()
            sub = await nc.subscribe("leaky.subject")
            want = {"js_consumers": before["js_consumers"] + 1, "nats_conn_subs": before["nats_conn_subs"] + 2}
            during = await asyncio.to_thread(settled, url, data_dir, want)
            assert {k: during[k] for k in want} == want, (before, during)
            assert during["nats_subs"] >= before["nats_subs"] + 2, (before, during)

            await jsconsumer.release(watcher._sub)
            await sub.unsubscribe()
            keys = ("js_consumers", "nats_conn_subs", "nats_subs")
            after = await asyncio.to_thread(settled, url, data_dir, {k: before[k] for k in keys})
            assert {k: after[k] for k in keys} == {k: before[k] for k in keys}, (before, after)
        finally:
            await nc.close()

    asyncio.run(main())
