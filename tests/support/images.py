"""Test images: re-exported from examples/busybox.py so tests and the demo make the same ones."""

from examples.busybox import (busybox_layout, busybox_rootfs, oci_layout, sha256, skopeo_env,  # noqa: F401
                              tar_dir, write_blob)
