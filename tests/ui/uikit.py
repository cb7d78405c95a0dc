"""Images with real layer tars, pushed over the OCI API, and a logged-in HTTP client for the UI tests."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
import time
import urllib.error
import urllib.request

import aiohttp

from tests.unit.registry.ocidata import OCI_MANIFEST, desc, digest, push_blob, push_manifest

BIG = 300_000  # the file a later layer deletes: the wasted-bytes culprit


def layer_tar(files: dict[str, bytes], whiteouts: tuple[str, ...] = ()) -> bytes:
    """A gzipped layer: regular files and `.wh.` whiteouts (the OCI convention)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in whiteouts:
            head, _, base = name.rpartition("/")
            tar.addfile(tarfile.TarInfo(f"{head}/.wh.{base}".lstrip("/")))
    return gzip.compress(raw.getvalue(), mtime=0)


def wasteful_image() -> tuple[list[bytes], bytes, list[str]]:
    """Layers of `COPY big.bin`, `RUN rm big.bin`, `COPY app.txt`: (layers, config, instructions)."""
    made_by = ["COPY big.bin /opt/big.bin # buildkit", "RUN /bin/sh -c rm /opt/big.bin # buildkit",
               "COPY app.txt /app.txt # buildkit"]
    layers = [layer_tar({"opt/big.bin": os.urandom(BIG), "etc/motd": b"hello\n"}),
              layer_tar({}, whiteouts=("opt/big.bin",)),
              layer_tar({"app.txt": b"the app\n", "etc/motd": b"changed\n"})]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-12-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin", "MODE=ui-test"], "Cmd": ["/bin/app", "--serve"], "User": "1000",
                   "ExposedPorts": {"8080/tcp": {}}, "Labels": {"org.example.team": "yard"}},
        "rootfs": {"type": "layers", "diff_ids": [digest(gzip.decompress(x)) for x in layers]},
        "history": [{"created_by": m} for m in made_by]}).encode()
    return layers, config, made_by


async def push_layers(http: aiohttp.ClientSession, base: str, repo: str, tag: str, layers: list[bytes],
                      config: bytes) -> str:
    for blob in [*layers, config]:
        await push_blob(http, base, repo, blob)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": desc("application/vnd.oci.image.config.v1+json", config),
                           "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", x) for x in layers]})
    return await push_manifest(http, base, repo, tag, manifest.encode())


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


async def login(base: str, user: str, password: str) -> aiohttp.ClientSession:
    """A browser-like client (its own cookie jar) logged in to the UI."""
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # unsafe: cookies for 127.0.0.1
    async with s.get(f"{base}/ui/login") as r:
        token = csrf_of(await r.text())
    async with s.post(f"{base}/ui/login", data={"username": user, "password": password, "csrf": token},
                      allow_redirects=False) as r:
        assert r.status == 303, await r.text()
    return s


def wait_for_registry(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/v2/", timeout=2)
            return
        except urllib.error.HTTPError as e:
            if e.code == 401:  # up, and asking who we are
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the registry at {url} never answered")
        time.sleep(0.2)
