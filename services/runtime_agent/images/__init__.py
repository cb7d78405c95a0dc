"""Images on one host: pulled through the registry API, unpacked into shared snapshots."""

from services.runtime_agent.images.pull import ImageName, Puller
from services.runtime_agent.images.store import ImageStore

__all__ = ["ImageName", "ImageStore", "Puller"]
