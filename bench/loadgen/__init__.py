"""A registry load generator (aiohttp): concurrent clients pushing, pulling, listing tags and
checking manifests, as skopeo would, with latency and error figures.

    from bench.loadgen import LoadConfig, run_load, verify_all
    result = await run_load(LoadConfig(base_url=..., creds=("admin", pw), clients=50, duration=60))
    failures = await verify_all(LoadConfig(...), result.images)

`client` speaks the registry protocol (Docker token flow, Retry-After), `content` makes
layers and images, `workload` runs the clients, `stats` keeps the figures.
"""

from bench.loadgen.workload import LoadConfig, LoadResult, run_load, verify_all

__all__ = ["LoadConfig", "LoadResult", "run_load", "verify_all"]
