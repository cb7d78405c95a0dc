"""The fleet's join exchange: the join token a new host is given, and the `dockyard.fleet.*` messages.

A token carries the NATS seed URLs, the fingerprint of the fleet's CA (the joiner trusts
the CA the bus hands it only if it matches), a one-time secret and a minimal "joiner" credential (a
user JWT that expires with the token and may publish only `dockyard.fleet.join` and `.ca`): that is
how a host with no credential of its own reaches the bus at all. The first node's `up`
(which holds the account signing key) trades the secret, once, for the host's own
credentials.
"""

from __future__ import annotations

import base64
import time

import msgspec

from shared.errors import InvalidArgument, Unauthenticated

PREFIX = "dockyard.fleet"
JOIN = f"{PREFIX}.join"
TOKEN = f"{PREFIX}.token"
LIST = f"{PREFIX}.ls"
REMOVE = f"{PREFIX}.remove"
CA = f"{PREFIX}.ca"  # the fleet CA certificate, which a joiner checks against the token's pin
SERVICE = "fleet"  # the first node's exchange, as it appears in `dockyard status`
TOKEN_MARK = "dyjoin1."


class JoinToken(msgspec.Struct, frozen=True):
    seeds: list[str]  # NATS client URLs of the fleet
    jwt: str  # the joiner credential: may publish JOIN only, expires at `exp`
    seed: str
    secret: str
    exp: int  # unix seconds
    services: list[str]
    ca: str = ""  # sha256 fingerprint of the fleet CA (shared.tls); "" for a loopback-only fleet


def encode_token(t: JoinToken) -> str:
    return TOKEN_MARK + base64.urlsafe_b64encode(msgspec.json.encode(t)).rstrip(b"=").decode()


def decode_token(text: str, *, now: float | None = None) -> JoinToken:
    """The token, or a clear error if it is not one or has expired (checked before any connection)."""
    text = text.strip()
    if not text.startswith(TOKEN_MARK):
        raise InvalidArgument("not a dockyard join token (make one with `dockyard fleet token`)")
    body = text[len(TOKEN_MARK):]
    try:
        t = msgspec.json.decode(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)), type=JoinToken)
    except (ValueError, msgspec.DecodeError) as e:
        raise InvalidArgument("the join token is damaged (copy the whole line)") from e
    if (now if now is not None else time.time()) >= t.exp:
        raise Unauthenticated(f"the join token expired at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(t.exp))}"
                              "; make a new one with `dockyard fleet token`")
    return t


class TokenRequest(msgspec.Struct, frozen=True):
    ttl: float = 3600.0
    services: list[str] = msgspec.field(default_factory=lambda: ["runtime-agent"])


class TokenReply(msgspec.Struct, frozen=True):
    token: str


class JoinRequest(msgspec.Struct, frozen=True):
    secret: str
    host: str  # the joining host's id (DOCKYARD_AGENT_ID / hostname)
    listen: str  # the address other hosts reach it at
    services: list[str]
    node: bool = True  # it runs a NATS node of its own (not `up --no-nats`): it gets a credential for it


class JoinReply(msgspec.Struct, frozen=True):
    creds: dict[str, str]  # principal -> .creds text, one per requested service plus its supervisor
    files: dict[str, str]  # name under DATA_DIR/credentials/ -> content: keys its services need
    seeds: list[str]
    registry: str  # host:port of the fleet's registry
    # where the host's own NATS node connects as a leaf node (shared/natsnodes.py); empty
    # when the first node accepts none (it listens on loopback)
    leafnodes: list[str] = []


class Host(msgspec.Struct, frozen=True):
    host: str
    listen: str
    services: list[str]
    joined_at: float
    users: list[str] = []  # public keys of the user JWTs issued to it (what `remove` revokes)
    first: bool = False  # the first node: holds the keys, runs the exchange; cannot be removed
    node: bool = False  # runs a NATS node of its own, a leaf node of the first node's


class ListRequest(msgspec.Struct, frozen=True):
    pass


class ListReply(msgspec.Struct, frozen=True):
    hosts: list[Host]


class RemoveRequest(msgspec.Struct, frozen=True):
    host: str


class RemoveReply(msgspec.Struct, frozen=True):
    revoked: int


class CARequest(msgspec.Struct, frozen=True):
    pass


class CAReply(msgspec.Struct, frozen=True):
    pem: str  # the CA certificate; public, checked by the joiner against the token's fingerprint
