"""`save` against a real CNCF registry: the archive's layers are checked against their diff ids,
and the bytes written to a file (with write-behind) are the bytes written to memory."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import aiohttp
import pytest

from shared.archives.save import save
from shared.errors import InvalidArgument
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from shared.oci.reference import Reference
from shared.registry import RegistryClient
from tests.unit.registry_client.conftest import CncfRegistry


def _layer(name: str, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo(name)
        ti.size = size
        tf.addfile(ti, io.BytesIO(hashlib.sha256(name.encode()).digest() * (size // 32)))
    return buf.getvalue()


@pytest.fixture
def registry(tmp_path):
    r = CncfRegistry(tmp_path)
    yield r
    r.stop()


async def _push(client: RegistryClient, repo: str, raw: bytes) -> Digest:
    """An image of one gzip layer (40 MB uncompressed: several write-behind steps)."""
    gz = gzip.compress(raw, compresslevel=1, mtime=0)
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [str(Digest.from_bytes(raw))]}}).encode()
    for blob in (gz, cfg):
        await client.push_blob(repo, Digest.from_bytes(blob), len(blob), blob)
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": mt.OCI_CONFIG, "digest": str(Digest.from_bytes(cfg)), "size": len(cfg)},
                "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": str(Digest.from_bytes(gz)), "size": len(gz)}]}
    await client.put_manifest(repo, "1", json.dumps(manifest).encode(), mt.OCI_MANIFEST)
    return Digest.from_bytes(gz)


async def test_a_saved_file_holds_the_layer_its_diff_id_names(registry, tmp_path):
    raw = _layer("big.bin", 40 << 20)
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session, registry.addr)
        await _push(client, "lib/app", raw)
        ref = Reference.parse("lib/app:1")
        mem = io.BytesIO()
        await save(client, [ref], mem)
        with open(tmp_path / "saved.tar", "wb") as f:
            await save(client, [ref], f)
    assert (tmp_path / "saved.tar").read_bytes() == mem.getvalue()
    with tarfile.open(tmp_path / "saved.tar") as tf:
        layer = json.load(tf.extractfile("manifest.json"))[0]["Layers"][0]
        assert tf.extractfile(layer).read() == raw
        assert layer == "blobs/sha256/" + hashlib.sha256(raw).hexdigest()


async def test_a_layer_that_does_not_uncompress_to_its_diff_id_is_refused(registry, tmp_path):
    raw = _layer("big.bin", 1 << 20)
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session, registry.addr)
        digest = await _push(client, "lib/app", raw)
    data = next(tmp_path.glob(f"data/docker/registry/v2/blobs/sha256/*/{digest.hex}/data"))
    size = data.stat().st_size
    # the registry's copy rots (its own digest is no longer checked by save): other content, as gzip;
    # then more bytes than the manifest gives; then bytes that are not gzip at all
    for rotten, error in ((gzip.compress(_layer("other.bin", 1 << 20), compresslevel=1, mtime=0)[:size],
                           "uncompresses to"),
                          (data.read_bytes() + b"\0" * 4096, "more than"),
                          (b"\x1f\x8b" + b"\xff" * (size - 2), "not valid gzip")):
        data.write_bytes(rotten)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(InvalidArgument, match=error):
                with open(tmp_path / "saved.tar", "wb") as f:
                    await save(RegistryClient(session, registry.addr), [Reference.parse("lib/app:1")], f)
