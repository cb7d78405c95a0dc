"""A registry HTTP client (OCI distribution), its credentials and image copying.

    async with aiohttp.ClientSession() as s:
        c = RegistryClient(s, "127.0.0.1:5000", credentials=CredentialStore())
        media_type, digest, body = await c.get_manifest("library/busybox", "latest")
"""

from .auth import RegistryAuth, TokenProvider, bus_token_provider, parse_challenge
from .client import BlobStream, FetchedManifest, RegistryClient, default_insecure
from .credentials import CredentialStore, Credentials, docker_config_path
from .platform import select_platform
from .transfer import CopyProgress, CopyResult, CopyStats, copy_image

__all__ = [
    "BlobStream", "CopyProgress", "CopyResult", "CopyStats", "CredentialStore", "Credentials", "FetchedManifest",
    "RegistryAuth", "RegistryClient", "TokenProvider", "bus_token_provider", "copy_image", "default_insecure",
    "docker_config_path", "parse_challenge", "select_platform",
]
