"""A real CNCF registry (Debian's docker-registry) on loopback, optionally with htpasswd auth."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

import aiohttp
import bcrypt
import pytest

from tests.support.ports import address_from_log


class CncfRegistry:
    def __init__(self, root, *, users: dict[str, str] | None = None):
        cfg = root / "config.yml"
        auth = ""
        if users:
            htpasswd = root / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
                                        for u, p in users.items()))
            auth = f"auth:\n  htpasswd:\n    realm: dyau\n    path: {htpasswd}\n"
        # port 0: distribution logs the address it got (at level info)
        cfg.write_text(f"version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n"
                       f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
                       f"http:\n  addr: 127.0.0.1:0\n{auth}")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                                     stderr=open(root / "registry.log", "wb"))
        self.addr = address_from_log(root / "registry.log", r"listening on (127\.0\.0\.1:\d+)", self.proc)
        self.port = int(self.addr.rpartition(":")[2])
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # 401: up, with auth
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("docker-registry did not start: " + (root / "registry.log").read_text())
                time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def cncf_registry(tmp_path_factory):
    started = []

    def start(users: dict[str, str] | None = None) -> CncfRegistry:
        r = CncfRegistry(tmp_path_factory.mktemp("dyau-registry"), users=users)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def _image(layers: list[bytes], arch: str = "amd64"):
    """(manifest bytes, {digest: bytes}) of an OCI image with these layer blobs."""
    from shared.oci import mediatypes as mt
    from shared.oci.digest import Digest
    from shared.oci.manifest import Descriptor, ImageConfig, Manifest, RootFS, encode_canonical
    config = encode_canonical(ImageConfig(architecture=arch, os="linux",
                                          rootfs=RootFS(diff_ids=[Digest.from_bytes(b) for b in layers])))
    blobs = {Digest.from_bytes(config): config, **{Digest.from_bytes(b): b for b in layers}}
    manifest = Manifest(schema_version=2, media_type=mt.OCI_MANIFEST,
                        config=Descriptor(media_type=mt.OCI_CONFIG, digest=Digest.from_bytes(config),
                                          size=len(config)),
                        layers=[Descriptor(media_type=mt.OCI_LAYER, digest=Digest.from_bytes(b), size=len(b))
                                for b in layers])
    return encode_canonical(manifest), blobs


@pytest.fixture
def make_image():
    return _image
