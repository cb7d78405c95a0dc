"""The fleet's TLS: a CA made by the first node, node certificates it signs, client contexts.

Everything lives in DATA_DIR/credentials/: `ca.pem` (public, what every client verifies
with), `ca-key.pem` (first node only: it signs the certificate of every host that joins),
`node.pem` / `node-key.pem` (this host's certificate for its IP addresses). Keys are ECDSA
P-256: small, and what nats-server and every TLS client accept.

Bus connections are TLS on any address but loopback: traffic that never leaves the host
gains nothing from it, traffic between hosts carries credentials and must not go plain.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
from pathlib import Path

from shared.errors import InvalidArgument, Unauthenticated

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
NODE_CERT_FILE = "node.pem"
NODE_KEY_FILE = "node-key.pem"
FINGERPRINT_PREFIX = "sha256:"
CA_DAYS = 3650
NODE_DAYS = 825  # what browsers and most TLS stacks accept for a leaf


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`: addresses that stay on this host."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def needs_tls(listen: str) -> bool:
    """Whether a server listening on `listen` (an address, no port) must demand TLS."""
    return not is_loopback(listen)


def fingerprint(cert_pem: bytes) -> str:
    """`sha256:<hex>` of the certificate's DER: what a join token pins."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode())
    return FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest()


def check_pinned(cert_pem: bytes, pinned: str) -> None:
    """Unauthenticated unless `cert_pem` is the CA the join token named."""
    try:
        got = fingerprint(cert_pem)
    except (ValueError, UnicodeDecodeError) as e:
        raise Unauthenticated("the fleet sent a CA certificate that is not PEM") from e
    if got != pinned:
        raise Unauthenticated(f"the fleet's CA certificate ({got}) is not the one the join token pins "
                              f"({pinned}): the address may not be the fleet's first node")


def client_context(ca_file: str | Path) -> ssl.SSLContext:
    """A client context that trusts the fleet's CA only and checks the server's name or IP."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgument(f"cannot read the fleet CA {ca_file}: {e}") from e


def unverified_context() -> ssl.SSLContext:
    """For fetching the CA before it is known; nothing secret is sent over it (see fleet join)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, secret: bool) -> None:
    from shared.credentials import write_secret
    from shared.fsutil import write_atomic
    (write_secret(path, data) if secret else write_atomic(path, data, mode=0o644))


def ensure_ca(cred_dir: Path, *, name: str = "dockyard fleet CA") -> bytes:
    """The CA certificate of this installation, made (with its key) on first use."""
    cert_path, key_path = Path(cred_dir) / CA_FILE, Path(cred_dir) / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path.read_bytes()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization
    pem = cert.public_bytes(serialization.Encoding.PEM)
    _write(key_path, _key_pem(key), secret=True)  # the key first: a cert without its key is useless
    _write(cert_path, pem, secret=False)
    return pem


def issue_node_cert(cred_dir: Path, host: str, addresses: list[str]) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `host`, valid for `addresses` (IPs or DNS names) as server
    and client (cluster routes are both); signed by the CA in `cred_dir`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    cred_dir = Path(cred_dir)
    ca_cert = x509.load_pem_x509_certificate((cred_dir / CA_FILE).read_bytes())
    ca_key = serialization.load_pem_private_key((cred_dir / CA_KEY_FILE).read_bytes(), password=None)
    names: list[x509.GeneralName] = []
    for a in dict.fromkeys([*addresses, "127.0.0.1", "localhost"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(a.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(a))
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=NODE_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def ensure_node_cert(cred_dir: Path, host: str, addresses: list[str]) -> None:
    """This (first) node's certificate, made again when its addresses changed."""
    from cryptography import x509
    cred_dir = Path(cred_dir)
    cert_path = cred_dir / NODE_CERT_FILE
    if cert_path.exists() and (cred_dir / NODE_KEY_FILE).exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
            if {a.strip("[]") for a in addresses} <= have and cert.not_valid_after_utc > _now():
                return
        except (ValueError, x509.ExtensionNotFound):
            pass  # a damaged or foreign file: replaced below
    cert_pem, key_pem = issue_node_cert(cred_dir, host, addresses)
    _write(cred_dir / NODE_KEY_FILE, key_pem, secret=True)
    _write(cert_path, cert_pem, secret=False)


def server_block(cred_dir: Path, *, verify_clients: bool = False) -> str:
    """nats-server's `tls { }` for client connections, from this node's files."""
    d = Path(cred_dir)
    return "\n".join([
        "tls {",
        f'  cert_file: "{d / NODE_CERT_FILE}"',
        f'  key_file: "{d / NODE_KEY_FILE}"',
        f'  ca_file: "{d / CA_FILE}"',
        *(["  verify: true"] if verify_clients else []),
        "  timeout: 5",
        "}", ""])


def default_ca_file(data_dir: str | Path | None = None) -> str:
    """The CA a bus client verifies with: $DOCKYARD_NATS_CA, else the data dir's `ca.pem` if
    there is one; "" when neither (a loopback stack needs none)."""
    import os
    named = os.environ.get("DOCKYARD_NATS_CA")
    if named:
        return named
    base = data_dir if data_dir is not None else os.environ.get("DOCKYARD_DATA_DIR")
    if not base:
        return ""
    p = Path(base) / "credentials" / CA_FILE
    return str(p) if os.access(p, os.R_OK) else ""


# ---- HTTPS for the registry-gateway and the layer-store data plane ----------------------

HTTP_TLS_ENV = "DOCKYARD_HTTP_TLS"
HTTP_TLS_MODES = ("auto", "on", "off")


def http_tls_mode() -> str:
    """DOCKYARD_HTTP_TLS: auto (default: HTTPS off loopback), on, or off (only behind a TLS
    proxy of one's own: the listener then answers anyone in plain HTTP)."""
    import os
    mode = os.environ.get(HTTP_TLS_ENV, "auto").strip().lower() or "auto"
    if mode not in HTTP_TLS_MODES:
        raise InvalidArgument(f"{HTTP_TLS_ENV}={mode!r}: want auto, on or off")
    return mode


def serves_https(addr: str) -> bool:
    """Whether an HTTP listener on `addr` (host or host:port) speaks HTTPS."""
    mode = http_tls_mode()
    if mode != "auto":
        return mode == "on"
    return needs_tls(_host_of(addr) or "0.0.0.0")  # no host: every address, so off loopback too


def _host_of(addr: str) -> str:
    """The host of `host`, `host:port`, `[v6]:port`, `[v6]` or a bare IPv6 address."""
    if addr.startswith("["):
        return addr[1:addr.find("]")]
    return addr.partition(":")[0] if addr.count(":") == 1 else addr


def http_scheme(addr: str) -> str:
    """`https` or `http`: how clients reach a dockyard listener on `addr`."""
    return "https" if serves_https(addr) else "http"


def server_context(cred_dir: str | Path) -> ssl.SSLContext:
    """A server context with this node's certificate (DATA_DIR/credentials/node.pem)."""
    d = Path(cred_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(d / NODE_CERT_FILE, d / NODE_KEY_FILE)
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgument(
            f"HTTPS needs this node's certificate {d / NODE_CERT_FILE} and key {d / NODE_KEY_FILE} "
            f"({e}): `dockyard up --listen ADDR` makes them, a joining host gets them from the fleet; "
            f"behind a TLS proxy of your own set {HTTP_TLS_ENV}=off") from e
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def http_client_context(ca_file: str | Path = "") -> ssl.SSLContext:
    """The system's CAs plus the fleet CA when there is one: the fleet's own HTTPS listeners
    and public registries both verify (name or IP, and chain)."""
    ctx = ssl.create_default_context()
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as e:
            raise InvalidArgument(f"cannot read the fleet CA {ca_file}: {e}") from e
    return ctx
