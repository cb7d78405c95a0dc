"""`ps -s`: the bytes a container wrote (its overlay upper directory), as docker's SIZE."""

from __future__ import annotations

import os

from shared.errors import NotFound


def writable_size(snapshots, cid: str) -> int:
    """Apparent bytes of the files in the container's upper directory (links not followed)."""
    try:
        upper = snapshots.active(cid).upper
    except NotFound:
        return 0
    total = 0
    for root, dirs, files in os.walk(upper):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # removed while we counted
    return total
