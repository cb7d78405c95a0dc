"""A container's /etc/hostname, /etc/hosts and /etc/resolv.conf, like docker's.

The agent writes them per container (`<container dir>/etc/`), anew on every start
because a bridged container's address can change between runs, and the runtime
bind-mounts them read-only over the image's own. They go with the container's
directory on `rm`.

- hosts: localhost, the IPv6 names docker writes, and the container's own address
  (bridged) naming its hostname. With the host's network it is the host's file.
- resolv.conf: the host's, without loopback nameservers (they would name the
  container's own `lo`); if none is left, the host's systemd-resolved upstream file
  or else docker's public defaults. `--network none` gets no nameserver at all.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from shared.errors import InvalidArgument
from shared.runtime import BindMount
from shared.runtime.records import write_atomic

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
HOST_HOSTS = Path("/etc/hosts")
# Where systemd-resolved lists the real upstream servers behind its 127.0.0.53 stub.
RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")
DEFAULT_NAMESERVERS = ("8.8.8.8", "8.8.4.4")  # docker's fallback when the host only has loopback

_HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$")

_LOCAL_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


def check_hostname(name: str) -> str:
    """An RFC 1123 host name of at most 64 characters (the kernel's limit for a UTS name)."""
    if len(name) > 64 or not _HOSTNAME_RE.match(name):
        raise InvalidArgument(f"invalid hostname {name!r}: letters, digits, '-' and '.', at most 64 characters")
    return name


@dataclass(frozen=True)
class EtcFiles:
    hostname: Path
    hosts: Path
    resolv_conf: Path

    def mounts(self) -> tuple[BindMount, ...]:
        return (BindMount(str(self.hostname), "/etc/hostname", readonly=True),
                BindMount(str(self.hosts), "/etc/hosts", readonly=True),
                BindMount(str(self.resolv_conf), "/etc/resolv.conf", readonly=True))


def hosts_content(hostname: str, ip: IPv4Address | None) -> str:
    own = f"{ip}\t{hostname}\n" if ip is not None else ""
    return _LOCAL_HOSTS + own


def resolv_conf_content(host_text: str, *, upstream_text: str | None = None, with_nameservers: bool = True) -> str:
    """The container's resolv.conf from the host's (and resolved's upstream file, if the host's is all loopback)."""
    kept, servers = _filter(host_text)
    if not with_nameservers:
        return "".join(kept)
    if not servers and upstream_text is not None:
        up_kept, up_servers = _filter(upstream_text)
        if up_servers:
            kept, servers = up_kept, up_servers
    if not servers:
        servers = [f"nameserver {ns}\n" for ns in DEFAULT_NAMESERVERS]
    return "".join(servers) + "".join(kept)


def _filter(text: str) -> tuple[list[str], list[str]]:
    """(other lines, non-loopback nameserver lines) of a resolv.conf."""
    kept, servers = [], []
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "nameserver":
            if len(fields) >= 2 and not _is_loopback(fields[1]):
                servers.append(f"nameserver {fields[1]}\n")
        elif line.strip():
            kept.append(line.strip() + "\n")
    return kept, servers


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%", 1)[0]).is_loopback
    except ValueError:
        return True  # not an address: nothing a container could use either


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def write(directory: Path, *, hostname: str, mode: str, ip: IPv4Address | None,
          nameserver: IPv4Address | None = None) -> EtcFiles:
    """Write the three files for one start of a container into `directory`.

    `nameserver`: a user network's embedded DNS, the only server the container then asks
    (docker's 127.0.0.11), with the host's search domains and options.
    """
    directory.mkdir(exist_ok=True)
    files = EtcFiles(directory / "hostname", directory / "hosts", directory / "resolv.conf")
    host_resolv = _read(HOST_RESOLV_CONF) or ""
    if mode == "host":
        # The host's own network: its loopback resolvers are reachable, its hosts file names it.
        hosts, resolv = _read(HOST_HOSTS) or hosts_content(hostname, None), host_resolv
    elif nameserver is not None:
        hosts = hosts_content(hostname, ip)
        kept, _ = _filter(host_resolv)
        resolv = f"nameserver {nameserver}\n" + "".join(kept) + "options ndots:0\n"
    else:
        hosts = hosts_content(hostname, ip)
        resolv = resolv_conf_content(host_resolv, upstream_text=_read(RESOLVED_UPSTREAM),
                                     with_nameservers=mode != "none")
    write_atomic(files.hostname, f"{hostname}\n".encode())
    write_atomic(files.hosts, hosts.encode())
    write_atomic(files.resolv_conf, resolv.encode())
    for p in (files.hostname, files.hosts, files.resolv_conf):
        p.chmod(0o644)  # readable by any user the container runs as
    return files
