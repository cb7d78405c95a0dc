"""The test image pushed to a fleet's registry as a user would: skopeo over HTTPS, verifying
the fleet CA from a cert dir (no --tls-verify=false)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.images import busybox_layout


def cert_dir(first, dest: Path) -> str:
    """`dest` as skopeo's --cert-dir (podman's too) wants it: the first node's CA as ca.crt."""
    dest.mkdir(exist_ok=True)
    shutil.copy(first.data_dir / "credentials" / "ca.pem", dest / "ca.crt")
    return str(dest)


def admin_password(first) -> str:
    return (first.data_dir / "admin-password").read_text().strip()


def push_busybox(first, work: Path, ref: str, *, via=None) -> None:
    """busybox pushed to `ref` (REGISTRY/REPO:TAG) from host `via` (default the first node)."""
    layout = work / "layout"
    if not layout.exists():
        busybox_layout(layout, work / "work")
    push = (via or first).exec("skopeo", "copy", "--dest-cert-dir", cert_dir(first, work / "certs"),
                               "--dest-creds", f"admin:{admin_password(first)}",
                               f"oci:{layout}:latest", f"docker://{ref}", timeout=120)
    assert push.returncode == 0, push.stderr + first.log("registry-gateway")
