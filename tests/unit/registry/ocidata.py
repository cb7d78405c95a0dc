"""Small OCI objects and a tiny push client for the registry tests (no registry code used)."""

from __future__ import annotations

import hashlib
import json
import os

import aiohttp

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def digest(data: bytes, alg: str = "sha256") -> str:
    return f"{alg}:{hashlib.new(alg, data).hexdigest()}"


def desc(media_type: str, data: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


class Image:
    def __init__(self, layer_size: int = 50_000, created: str = "2024-01-02T03:04:05Z"):
        self.layer = os.urandom(layer_size)
        self.config = json.dumps({"architecture": "amd64", "os": "linux", "created": created,
                                  "rootfs": {"type": "layers", "diff_ids": [digest(self.layer)]}}).encode()

    def manifest(self, docker: bool = False, **extra) -> bytes:
        if docker:
            m = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                 "config": desc("application/vnd.docker.container.image.v1+json", self.config),
                 "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", self.layer)]}
        else:
            m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": desc("application/vnd.oci.image.config.v1+json", self.config),
                 "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", self.layer)], **extra}
        return json.dumps(m).encode()


def index(*manifests: bytes) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        desc(OCI_MANIFEST, m, platform={"architecture": "amd64", "os": "linux"}) for m in manifests]}).encode()


def artifact(subject: bytes, artifact_type: str, annotations: dict | None = None) -> bytes:
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
         "config": desc("application/vnd.oci.empty.v1+json", b"{}"),
         "layers": [desc("application/vnd.oci.empty.v1+json", b"{}")],
         "subject": desc(OCI_MANIFEST, subject)}
    if annotations:
        m["annotations"] = annotations
    return json.dumps(m).encode()


async def push_blob(http: aiohttp.ClientSession, base: str, repo: str, data: bytes, alg: str = "sha256") -> str:
    d = digest(data, alg)
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/", params={"digest": d}, data=data) as r:
        assert r.status == 201, await r.text()
        assert r.headers["Docker-Content-Digest"] == d
    return d


async def push_manifest(http: aiohttp.ClientSession, base: str, repo: str, ref: str, body: bytes,
                        media_type: str = OCI_MANIFEST) -> str:
    async with http.put(f"{base}/v2/{repo}/manifests/{ref}", data=body,
                        headers={"Content-Type": media_type}) as r:
        assert r.status == 201, await r.text()
        return r.headers["Docker-Content-Digest"]


async def push_image(http, base: str, repo: str, ref: str, image: Image, docker: bool = False) -> str:
    await push_blob(http, base, repo, image.layer)
    await push_blob(http, base, repo, image.config)
    return await push_manifest(http, base, repo, ref, image.manifest(docker),
                               DOCKER_MANIFEST if docker else OCI_MANIFEST)
