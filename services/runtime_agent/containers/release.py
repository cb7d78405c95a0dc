"""What an exited container gives back to the host, and takes again on `start`.

docker's rule: a stopped container holds no kernel objects, only its record, its
writable layer and its log. Its network (netns, veth, published-port rules) and its
rootfs overlay mount are released the moment its process ends (stop, kill, its own
exit, the OOM killer); the runtime has already removed its cgroup. `start` mounts and
wires it again (manager._start). Without this, a host that keeps many exited
containers keeps as many overlay mounts.
"""

from __future__ import annotations

import asyncio
import logging

from services.runtime_agent.containers import rootfs
from services.runtime_agent.network import Network
from shared.layers import SnapshotStore

log = logging.getLogger("dockyard.agent.containers")


async def release(network: Network, snapshots: SnapshotStore, cid: str) -> None:
    """Free the network and unmount the rootfs of container `cid`, which has exited.

    Both are attempted even if one fails: a failure is logged, never raised, since the
    exit must be recorded whatever the host did (the next `start` or `rm` tries again).
    """
    try:
        await network.teardown(cid)
    except Exception:  # noqa: BLE001 - see above
        log.exception("network teardown of %s failed", cid[:12])
    try:
        await asyncio.to_thread(rootfs.unmount, snapshots, cid)
    except Exception:  # noqa: BLE001 - see above
        log.exception("unmount of the rootfs of %s failed", cid[:12])


async def release_exited(snapshots: SnapshotStore, cids: list[str]) -> None:
    """Unmount containers found not running at an agent's start (an older agent kept their mounts)."""
    for cid in cids:
        await asyncio.to_thread(rootfs.unmount, snapshots, cid)
