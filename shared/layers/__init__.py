"""Image layers: compression, safe unpacking, diffs into layers, overlay mounts, snapshots.

The names below load their module on first use: `cp` in the CLI needs only
shared.layers.paths, and importing the package must not bring in zlib/isal, overlay
mounts and the snapshot store for it.
"""

from importlib import import_module

_WHERE = {
    "Compression": "compression", "compression_of_media_type": "compression", "detect": "compression",
    "media_type": "compression", "LayerResult": "diff", "has_changes": "diff", "write_layer": "diff",
    "ActiveDirs": "snapshots", "SnapshotStore": "snapshots", "StoreUsage": "snapshots",
    "UnpackResult": "unpack", "unpack_layer": "unpack",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
