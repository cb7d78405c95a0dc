"""A KV bucket's values, read by whichever bus client the CLI holds."""

from __future__ import annotations

from typing import Any


async def kv_values(client: Any, bucket: str, value_type: type) -> list:
    """Every value of `bucket` decoded as `value_type`; none when the bucket does not exist yet."""
    if hasattr(client, "kv_entries"):  # shared.bus_lite / bus_blocking: the whole bucket in one round trip
        from shared import codec
        dec = codec.decoder(value_type)
        return [dec.decode(v) for _, v in await client.kv_entries(bucket)]
    import nats.js.errors  # nats-py's full client: TLS or websocket URLs
    from shared.bus import TypedKV
    try:
        kv = await client.nc.jetstream().key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return []
    return [v for _, v, _ in await TypedKV(kv, value_type).items()]
