"""Configuration from flags and `DOCKYARD_*` environment variables (flags win)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import msgspec

from shared.credentials import ADMIN, creds_path
from shared.errors import InvalidArgument

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "dockyard"
DEFAULT_NATS_PORT = 4222
DEFAULT_NATS_URL = f"nats://127.0.0.1:{DEFAULT_NATS_PORT}"
DEFAULT_REGISTRY_ADDR = "127.0.0.1:5000"


class Config(msgspec.Struct, kw_only=True, frozen=True):
    data_dir: str = str(DEFAULT_DATA_DIR)
    nats_url: str = DEFAULT_NATS_URL
    # the bus credentials (a NATS .creds file); empty: the data dir's admin.creds if readable
    creds: str = ""
    # where the registry-gateway listens, and how others reach it
    registry_addr: str = DEFAULT_REGISTRY_ADDR
    registry_url: str = ""
    # the layer-store's HTTP data plane; port 0 picks a free one (found via the bus)
    layer_store_addr: str = "127.0.0.1:0"
    layer_store_url: str = ""  # the URL others use when it differs from the listen address
    agent_id: str = ""
    log_level: str = "info"
    # the fleet CA that a NATS demanding TLS is verified against; empty: the data dir's, if any
    nats_ca: str = ""

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def service_dir(self, service: str) -> Path:
        """A service's own state directory under the data dir, created on demand."""
        p = self.data_path / service
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def bus_creds(self) -> str:
        """The credentials file to connect with: `creds`, else the local administrator's if readable."""
        if self.creds:
            return self.creds
        admin = creds_path(self.data_path, ADMIN)
        return str(admin) if os.access(admin, os.R_OK) else ""

    @property
    def nats_ca_file(self) -> str:
        """`nats_ca`, else DATA_DIR/credentials/ca.pem if readable, else "" (plain NATS only)."""
        if self.nats_ca:
            return self.nats_ca
        ca = self.data_path / "credentials" / "ca.pem"
        return str(ca) if os.access(ca, os.R_OK) else ""

    @property
    def fleet_ca(self) -> str:
        """The CA every dockyard client verifies the fleet's TLS with (NATS and HTTPS alike)."""
        return self.nats_ca_file

    @property
    def registry_base_url(self) -> str:
        """`registry_url`, else the gateway's listen address with the scheme it serves."""
        from shared.tls import http_scheme  # ssl and hashlib: not for the commands that never ask
        return self.registry_url or f"{http_scheme(self.registry_addr)}://{self.registry_addr}"

    @property
    def host_id(self) -> str:
        return self.agent_id or socket.gethostname()

    def env(self, name: str, default: str = "") -> str:
        """A service-specific setting, `DOCKYARD_<NAME>` in the environment."""
        return os.environ.get(f"DOCKYARD_{name.upper()}", default)


def split_host_port(addr: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`, empty host = all addresses); port 0 means any free port."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"invalid address {addr!r}: want HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def load(*, under: dict[str, str] | None = None, **flags: Any) -> Config:
    """Defaults, overridden by `under` (what a running stack recorded, see shared.stackfile),
    by `DOCKYARD_*` env vars, then by non-None flags."""
    values: dict[str, Any] = dict(under or {})
    for field in Config.__struct_fields__:
        env = os.environ.get(f"DOCKYARD_{field.upper()}")
        if env is not None:
            values[field] = env
    values.update({k: v for k, v in flags.items() if v is not None})
    if "data_dir" in values:
        values["data_dir"] = str(Path(values["data_dir"]).expanduser().resolve())
    return msgspec.convert(values, Config)
