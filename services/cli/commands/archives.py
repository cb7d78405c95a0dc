"""`save` and `load`: images of the stack registry to and from docker/OCI archives (shared/archives)."""

from __future__ import annotations

import os
import sys
from typing import Any


def register(sub: Any) -> None:
    from services.cli.progress import add_flag
    p = sub.add_parser("save", help="save images to a tar archive (docker-archive and OCI layout in one)")
    p.add_argument("-o", "--output", help="write to this file instead of stdout (-: stdout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    add_flag(p)
    p.add_argument("images", nargs="+")
    p.set_defaults(func=save)

    p = sub.add_parser("load", help="load images from a docker or OCI archive (gzip/zstd too) into the stack registry")
    p.add_argument("-i", "--input", help="read from this file instead of stdin")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, only what was loaded")
    add_flag(p)
    p.set_defaults(func=load)


def _client(session, ctx, bus_client):
    from shared.registry.auth import bus_token_provider
    from shared.registry.client import RegistryClient
    return RegistryClient(session, ctx.config.registry_base_url, token_provider=bus_token_provider(bus_client, "cli"))


async def save(args, ctx) -> int:
    import tempfile
    from pathlib import Path

    from services.cli.progress import reporter_for
    from shared import http_client
    from shared.archives.save import save as save_images
    from shared.errors import InvalidArgument
    from shared.fsutil import fsync_dir
    from shared.oci.reference import Reference
    from shared.registry.stackref import is_stack
    refs = []
    for text in args.images:
        ref = Reference.parse(text)
        if not is_stack(ref, ctx.config):
            raise InvalidArgument(f"{text} is not in the stack registry: `dockyard pull {text}` first")
        refs.append(ref.with_domain(None))
    target = None if args.output in (None, "-") else args.output  # `-o -`: stdout, as no -o
    if target is None and sys.stdout.isatty():
        raise InvalidArgument("cowardly refusing to write an archive to a terminal: use -o FILE or a pipe")
    b = await ctx.bus()
    # the tar's headers are patched in place once a layer's size is known: a pipe gets a temp file first
    tmp = None if target else tempfile.NamedTemporaryFile(prefix="dockyard-save-", suffix=".tar")
    path = target + f".{os.getpid()}.partial" if target else tmp.name
    try:
        # progress goes to stderr: stdout may be the archive itself
        async with http_client.session(ctx.config.fleet_ca) as session:
            with open(path, "wb") as out, reporter_for(args, ctx, verb="Save") as reporter:
                await save_images(_client(session, ctx, b), refs, out, progress=reporter.transfer)
                out.flush()
                os.fsync(out.fileno())
        if target:
            os.replace(path, target)
            fsync_dir(Path(os.path.abspath(target)).parent)  # the rename itself survives a crash too
        else:
            with open(path, "rb") as f, os.fdopen(os.dup(sys.stdout.fileno()), "wb") as so:
                while chunk := f.read(1 << 20):
                    so.write(chunk)
    finally:
        if target and os.path.exists(path):
            os.unlink(path)
        if tmp is not None:
            tmp.close()
    return 0


async def load(args, ctx) -> int:
    import asyncio
    from pathlib import Path
    from urllib.parse import urlsplit

    from services.cli.progress import reporter_for
    from shared import http_client
    from shared.archives import load as ar
    from shared.archives.upload import upload
    b = await ctx.bus()
    with ar.workdir() as work:
        if args.input:
            path = await asyncio.to_thread(ar.open_input, Path(args.input), Path(work))
        else:
            path = await asyncio.to_thread(ar.spool, sys.stdin.buffer, Path(work))
        archive = await asyncio.to_thread(ar.Archive, path)
        images = await asyncio.to_thread(ar.plan, archive)
        async with http_client.session(ctx.config.fleet_ca) as session:
            with reporter_for(args, ctx, verb="Load") as reporter:
                reporter.log(f"Loading {len(images)} image(s): "
                             f"{sum(x.size for i in images for x in i.layers) / 1e6:.1f}MB of layers")
                loaded = await upload(_client(session, ctx, b), archive, images, progress=reporter.transfer)
    where = urlsplit(ctx.config.registry_base_url).netloc
    if ctx.json_output:
        from dataclasses import asdict
        ctx.print_json([asdict(x) for x in loaded])
        return 0
    for x in loaded:
        if x.name:
            print(f"Loaded image: {x.name} (into the stack registry: {where}/{x.name})")
        else:
            print(f"Loaded image ID: {x.config_digest} (into the stack registry: {where}/{x.repository}@{x.digest})")
    return 0
