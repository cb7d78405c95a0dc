"""Whether two processes share a loopback: the same kernel boot and the same network namespace.

A loopback URL one process hands another reaches the same listener only then: fleet hosts
may be network namespaces of one kernel (../HOST-NOTES.md), whose 127.0.0.1 differ.
"""

from __future__ import annotations

import os


def here() -> str:
    """`<boot id>:<netns inode>` of this process; "" where /proc does not tell."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return ""
    return f"{boot}:{netns}"
