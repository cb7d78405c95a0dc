"""Off loopback the registry and the layer-store serve HTTPS with the fleet's node certificates:
clients that trust the fleet CA get answers (curl, skopeo, the runtime-agent of a joined
host), clients that do not fail verification, plain HTTP gets a readable 400, and blob
redirects and direct uploads send clients to the layer-store over HTTPS."""

from __future__ import annotations

import hashlib
import json
import pytest

from tests.fleet.pushing import admin_password, cert_dir, push_busybox

pytestmark = pytest.mark.root


def _curl(h, *args: str) -> tuple[int, str, str]:
    """(curl's exit code, HTTP status or "", body) of a request from host h's namespace."""
    p = h.exec("curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", *args)
    body, _, status = p.stdout.rpartition("\n")
    return p.returncode, status if p.returncode == 0 else "", body + p.stderr


def _layer_store_url(h) -> str:
    status = json.loads(h.cli("--json", "status").stdout)
    detail = next(s["detail"] for s in status["services"] if s["name"] == "layer-store")
    return next(kv.split("=", 1)[1] for kv in detail.split() if kv.startswith("url="))


def test_registry_and_layer_store_serve_https_with_the_fleet_ca(make_fleet, tmp_path):
    fl = make_fleet(2)
    h1, h2 = fl.hosts
    # Redirects and direct uploads on: clients go to the layer-store itself, so it is on the path.
    h1.env.update(DOCKYARD_REGISTRY_BLOB_REDIRECT="on", DOCKYARD_REGISTRY_DIRECT_UPLOAD="on")
    h1.up("--listen", h1.addr, "--nats-port", "4222", "--registry-addr", f"{h1.addr}:5000")
    token = h1.cli("fleet", "token").stdout.strip()
    h2.up("--join", h1.addr, "--token", token, "--listen", h2.addr, "--services", "runtime-agent")
    ca = h1.data_dir / "credentials" / "ca.pem"
    assert (h2.data_dir / "credentials" / "ca.pem").read_bytes() == ca.read_bytes()
    registry = f"{h1.addr}:5000"
    password = admin_password(h1)

    # curl on host 2: with the CA the registry answers (its auth challenge), without it the
    # certificate does not verify (curl's 60), and plain http gets a 400 that says why
    code, status, _ = _curl(h2, "--cacert", str(ca), f"https://{registry}/v2/")
    assert (code, status) == (0, "401")
    code, _, err = _curl(h2, f"https://{registry}/v2/")
    assert code == 60 and "certificate" in err, err
    code, status, body = _curl(h2, f"http://{registry}/v2/")
    assert (code, status) == (0, "400") and "this port speaks HTTPS" in body, body

    store = _layer_store_url(h1)
    assert store.startswith(f"https://{h1.addr}:"), store
    code, status, _ = _curl(h2, "--cacert", str(ca), f"{store}/blobs/sha256:{'0' * 64}")
    assert (code, status) == (0, "403")  # answered over TLS, and unsigned requests are refused
    code, status, body = _curl(h2, "http" + store[len("https"):] + "/")
    assert (code, status) == (0, "400") and "this port speaks HTTPS" in body, body

    # skopeo pushes and pulls with the CA in a cert dir (uploads go to the layer-store directly)
    push_busybox(h1, tmp_path, f"{registry}/fleet/busybox:1", via=h2)
    certs = cert_dir(h1, tmp_path / "certs")
    layout = tmp_path / "layout"
    refused = h2.exec("skopeo", "inspect", "--raw", "--creds", f"admin:{password}",
                      f"docker://{registry}/fleet/busybox:1", timeout=60)
    assert refused.returncode != 0 and "certificate" in refused.stderr, refused.stderr
    out = tmp_path / "pulled"
    pull = h2.exec("skopeo", "copy", "--src-cert-dir", certs, "--src-creds", f"admin:{password}",
                   f"docker://{registry}/fleet/busybox:1", f"oci:{out}:v1", timeout=120)
    assert pull.returncode == 0, pull.stderr
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    layer = manifest["layers"][0]["digest"]
    assert (layout / "blobs" / "sha256" / layer.split(":")[1]).exists()

    # a blob GET is redirected to the layer-store's https:// URL, and the bytes there verify
    blob = f"https://{registry}/v2/fleet/busybox/blobs/{layer}"
    head = h2.exec("curl", "-sS", "--max-time", "10", "--cacert", str(ca), "-u", f"admin:{password}",
                   "-o", "/dev/null", "-D", "-", blob)
    location = next((line.split(":", 1)[1].strip() for line in head.stdout.splitlines()
                     if line.lower().startswith("location:")), "")
    assert head.stdout.startswith("HTTP/1.1 307") and location.startswith(store + "/"), head.stdout + head.stderr
    dest = tmp_path / "blob"
    got = h2.exec("curl", "-sS", "--fail", "--max-time", "20", "--cacert", str(ca), "-u", f"admin:{password}",
                  "-L", "-o", str(dest), blob)
    assert got.returncode == 0, got.stderr
    assert "sha256:" + hashlib.sha256(dest.read_bytes()).hexdigest() == layer

    # the runtime-agent of the joined host pulls over HTTPS (verifying with the CA it was given)
    run = h1.cli("run", "--rm", "--host", h2.agent_id, "fleet/busybox:1", "echo", "pulled over https", check=False)
    assert run.returncode == 0 and run.stdout == "pulled over https\n", run.stderr + h2.log("runtime-agent")

