"""The fleet's NATS nodes: the first node accepts leaf nodes, a joined host's node is one.

A joined host runs a nats-server of its own that holds no state: its services connect to it
(on loopback), and it relays their traffic to the first node over one leaf connection (TLS
both ways, authenticated by a credential of the host's own that `fleet remove` revokes).
JetStream stays on the first node alone. Leaf nodes rather than routes, because a server
with a cluster port runs JetStream clustered: it needs 2 peers to elect a meta leader (the
first node alone would wait ~30 s, a fleet of two would stop when either host goes) and
deletes the streams it made standalone as orphans, which would lose every bucket of a data
dir that existed before its first join.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared import tls

DEFAULT_LEAF_PORT = 7422  # nats-server's own default for leaf nodes
TRUST_FILE = "nats-trust.conf"  # on a joined host: the fleet's operator and accounts, from the exchange


def server_name(host: str) -> str:
    """A node is named after its host: `status` says which host holds a bucket. In the config
    file, not on the command line: nats-server reloads the file without its `-n`."""
    return f"server_name: {json.dumps(host)}\n"


def default_js_domain(account_pub: str) -> str:
    """The account's JetStream is the one of the empty domain. Without it both ends of a leaf
    connection deny `$JS.API.>` and `$KV.>` across it (nats-server leafnode.go), and a joined
    host's services could not reach a bucket."""
    return f'default_js_domain: {{ {account_pub}: "" }}\n'


def leaf_listener(host: str, port: int, tls_block: str) -> str:
    """The first node's `leafnodes {}`: where joined nodes connect (`port` -1: any free port)."""
    inner = "\n".join("  " + line for line in tls_block.splitlines() if line)
    return f'leafnodes {{\n  listen: "{host}:{port}"\n{inner}\n}}\n'


def leaf_tls(cred_dir: Path) -> str:
    """The first node's leaf TLS: its certificate, and one the fleet CA signed demanded of every
    joined node."""
    return tls.server_block(cred_dir, verify_clients=True)


def joined_node_config(*, name: str, trust: str, cred_dir: Path, hubs: list[str], creds: Path,
                       account_pub: str) -> str:
    """A joined host's node: the fleet's trust (its clients present their own credentials
    here too) and the leaf connection to the first node's `hubs`. It listens on loopback
    (`up` sees to it): its clients are its host's services, and a credential `fleet remove`
    revoked at the first node must not find a node elsewhere that has not heard of it."""
    cred_dir = Path(cred_dir)
    urls = ", ".join(f'"{u}"' for u in hubs)
    remote = [f"    urls: [{urls}]", f'    credentials: "{creds}"', f'    account: "{account_pub}"']
    if any(u.startswith("tls://") for u in hubs):
        remote += ["    tls {", f'      cert_file: "{cred_dir / tls.NODE_CERT_FILE}"',
                   f'      key_file: "{cred_dir / tls.NODE_KEY_FILE}"', f'      ca_file: "{cred_dir / tls.CA_FILE}"',
                   "    }"]
    return "".join([
        trust if trust.endswith("\n") else trust + "\n", server_name(name),
        default_js_domain(account_pub),
        "leafnodes {\n  remotes: [\n  {\n", "\n".join(remote), "\n  }\n  ]\n}\n"])
