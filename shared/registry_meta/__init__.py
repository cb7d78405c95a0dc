"""Registry metadata in JetStream KV, shared by the registry-gateway and the garbage-collector."""

from shared.registry_meta.records import (BlobLink, ManifestLink, Referrer, RepositoryRecord,
                                          TagRecord, UploadSession)
from shared.registry_meta.store import RegistryMeta

__all__ = ["BlobLink", "ManifestLink", "Referrer", "RegistryMeta",
           "RepositoryRecord", "TagRecord", "UploadSession"]
