"""An address of this host that is not loopback, on a bridge the test makes (and removes):
a client connecting to it from here is seen as coming from it, as a remote client would be."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def non_loopback_address(n: int = 0) -> Iterator[str]:
    """A /32 on a portless bridge named for this process (no route leaves the host)."""
    name = f"dyna{os.getpid() % 100000}{n}"
    addr = f"10.231.{os.getpid() % 250}.{1 + n}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{addr}/32", "dev", name], check=True, capture_output=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True, capture_output=True)
        yield addr
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)
