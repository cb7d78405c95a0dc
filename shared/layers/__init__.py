"""Image layers: compression, safe unpacking, diffs into layers, overlay mounts, snapshots."""

from shared.layers.compression import Compression, compression_of_media_type, detect, media_type
from shared.layers.diff import LayerResult, has_changes, write_layer
from shared.layers.snapshots import ActiveDirs, SnapshotStore, StoreUsage
from shared.layers.unpack import UnpackResult, unpack_layer

__all__ = [
    "ActiveDirs", "Compression", "LayerResult", "SnapshotStore", "StoreUsage", "UnpackResult",
    "compression_of_media_type", "detect", "has_changes", "media_type", "unpack_layer", "write_layer",
]
