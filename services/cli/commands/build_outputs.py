"""`dockyard build` outputs and inputs beyond a directory: `--output`, `--iidfile`, `--metadata-file`, stdin.

The builder always stores the image in the stack registry (`type=image`; with
a registry's name in `name=` or `-t` it pushes there too: `type=registry`).
The other outputs are made here from the stored image's blobs, on the
client's disk, as BuildKit's exporters make them.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.csvopts import key_values
from shared.errors import InvalidArgument

FILE_OUTPUTS = ("local", "tar", "oci", "docker")
OUTPUT_TYPES = ("image", "registry", *FILE_OUTPUTS)


@dataclass(frozen=True)
class Output:
    type: str
    dest: str = ""  # a dir for local, a file (or - for stdout) for tar, oci, docker
    names: tuple[str, ...] = ()


def parse_output(text: str) -> Output:
    """`type=T,dest=D,name=N` (buildx's CSV), or a bare path: `-` is a tar on stdout, else a local dir."""
    if "=" not in text:
        return Output("tar", "-") if text == "-" else Output("local", text)
    fields = key_values(text, "--output")
    kind = fields.pop("type", "")
    if kind not in OUTPUT_TYPES:
        raise InvalidArgument(f"--output {text!r}: type must be one of {', '.join(OUTPUT_TYPES)}")
    dest = fields.pop("dest", "")
    names = tuple(n for n in fields.pop("name", "").split(",") if n)
    fields.pop("push", None)  # type=image,push=true is type=registry: the builder pushes named images
    if fields:
        raise InvalidArgument(f"--output {text!r}: unknown key {sorted(fields)[0]!r}")
    if kind in FILE_OUTPUTS and not dest:
        raise InvalidArgument(f"--output type={kind} needs dest=")
    return Output(kind, dest, names)


def context_from_stdin(tmp: Path) -> tuple[str, str | None]:
    """`dockyard build -`: (context dir, Dockerfile text if stdin was one rather than a tar)."""
    import gzip
    import tarfile

    from shared.buildcontext import unpack_context
    data = sys.stdin.buffer.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    root = tmp / "context"
    raw = tmp / "stdin.tar"
    raw.write_bytes(data)
    try:
        is_tar = tarfile.is_tarfile(raw)
    except OSError:
        is_tar = False
    if not is_tar:
        root.mkdir()
        return str(root), data.decode("utf-8", errors="replace")
    with open(raw, "rb") as f:
        unpack_context(f, str(root))
    return str(root), None


def write_ids(reply: Any, iidfile: str | None, metadata_file: str | None) -> None:
    """`--iidfile` (docker's image id: the config digest) and `--metadata-file` (BuildKit's keys)."""
    if iidfile:
        Path(iidfile).write_text(str(reply.config_digest))
    if metadata_file:
        meta = {
            "containerimage.config.digest": str(reply.config_digest),
            "containerimage.digest": str(reply.digest),
            "containerimage.descriptor": {"mediaType": reply.media_type, "digest": str(reply.digest),
                                          "size": reply.manifest_size},
            "image.name": ",".join(reply.tags),
        }
        Path(metadata_file).write_text(json.dumps(meta, indent=2) + "\n")


async def export(ctx: Any, reply: Any, outputs: list[Output]) -> None:
    """Write the file outputs of a finished build from the stack registry's copy of the image."""
    wanted = [o for o in outputs if o.type in FILE_OUTPUTS]
    if not wanted:
        return  # before the imports: a plain build never loads the HTTP client
    import asyncio
    import tempfile

    from shared import http_client
    from shared.layers.export import ImageFiles, extract_rootfs, unpack_all, write_layout, write_rootfs
    from shared.oci.digest import Digest
    from shared.oci.reference import Reference
    from shared.registry.auth import bus_token_provider
    from shared.registry.client import RegistryClient
    ref = Reference.parse(reply.tags[0])
    if ref.domain is not None:
        raise InvalidArgument(f"--output: {reply.tags[0]} is not in the stack registry")
    b = await ctx.bus()
    with tempfile.TemporaryDirectory(prefix="dockyard-output-") as tmp_dir:
        tmp = Path(tmp_dir)
        async with http_client.session(ctx.config.fleet_ca) as session:
            client = RegistryClient(session, ctx.config.registry_base_url, token_provider=bus_token_provider(b, "cli"))
            got = await client.get_manifest(ref.path, str(reply.digest))
            manifest = json.loads(got.body)
            layers = [d["digest"] for d in manifest["layers"]]
            blobs = {d: tmp / d.replace(":", "-") for d in [manifest["config"]["digest"], *layers]}
            await asyncio.gather(*(client.fetch_blob_to(ref.path, Digest(d), str(p)) for d, p in blobs.items()))
        img = ImageFiles(manifest=got.body, media_type=got.media_type, digest=str(got.digest),
                         config_digest=manifest["config"]["digest"], layer_digests=layers, blobs=blobs)
        names = [t for t in reply.tags if "@" not in t]

        def write() -> None:
            snaps: list[Path] | None = None
            for o in wanted:
                if o.type in ("oci", "docker"):
                    with _open_dest(o.dest) as f:
                        write_layout(img, f, list(o.names) or names, docker=o.type == "docker")
                    continue
                if snaps is None:
                    (tmp / "layers").mkdir()
                    snaps = unpack_all(img, tmp / "layers")
                if o.type == "tar":
                    with _open_dest(o.dest) as f:
                        write_rootfs(snaps, f)
                else:
                    extract_rootfs(snaps, Path(o.dest), tmp)

        await asyncio.to_thread(write)


def _open_dest(dest: str):
    if dest == "-":
        return os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    return open(dest, "wb")
