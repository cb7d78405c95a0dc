"""Which references name the stack's own registry, and how to reach it.

Unqualified names (`kuard:1`) live in the stack registry, as docker keeps them
locally; so do names under the stack's own address (`127.0.0.1:5000/team/app:1`).
A foreign image is kept in the stack under its repository path (`host/team/app:1`
-> `team/app:1`), so `pull` brings it in and `push` sends it back under that name.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from shared.config import Config
from shared.tls import http_scheme
from shared.oci.reference import Reference


def stack_base_url(cfg: Config) -> str:
    """How a client on this host reaches the stack registry (wildcard listen -> loopback)."""
    if cfg.registry_url:
        return cfg.registry_url
    host, _, port = cfg.registry_addr.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"  # the node certificate names 127.0.0.1 too
    return f"{http_scheme(cfg.registry_addr)}://{host}:{port}"


def is_stack(ref: Reference, cfg: Config) -> bool:
    if ref.domain is None:
        return True
    return ref.domain in {cfg.registry_addr, urlsplit(stack_base_url(cfg)).netloc}


def local_name(ref: Reference) -> str:
    """The reference as the stack registry knows it: path, tag and digest, no registry."""
    s = ref.path
    if ref.tag:
        s += f":{ref.tag}"
    if ref.digest:
        s += f"@{ref.digest}"
    return s
