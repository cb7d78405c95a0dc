"""Blob storage drivers: a small protocol and its implementations."""

from services.layer_store.storage.base import StorageDriver, Usage
from services.layer_store.storage.filesystem import FilesystemDriver

__all__ = ["FilesystemDriver", "StorageDriver", "Usage"]
