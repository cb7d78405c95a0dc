"""`dockyard build`, `import` and `history`: the builder's verbs from the command line.

The context is packed here (respecting `.dockerignore`), uploaded once to the
stack registry as a blob (an unchanged context has the same digest and is not
sent again), and the build request names it. Heavy imports wait until a
handler runs, so `dockyard ps` never pays for them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build an image from a Dockerfile")
    p.add_argument("context", help="the build context directory")
    p.add_argument("-t", "--tag", action="append", default=[], help="name:tag (repeatable)")
    p.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    p.add_argument("--target", default="", help="the stage to build")
    p.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    p.add_argument("--secret", action="append", default=[], metavar="id=X,src=FILE")
    p.add_argument("--progress", choices=("auto", "plain"), default="auto")
    p.add_argument("--compression", choices=("gzip", "zstd"), default="gzip")
    p.add_argument("--network", choices=("default", "none", "host"), default="default")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image digest")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("import", help="make a base image from a rootfs tarball")
    p.add_argument("tarball")
    p.add_argument("name", help="NAME:TAG")
    p.add_argument("-c", "--change", action="append", default=[], help="a Dockerfile instruction")
    p.add_argument("-m", "--message", default="")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("history", help="the layers of an image: instruction, size, wasted bytes")
    p.add_argument("image")
    p.add_argument("--no-trunc", action="store_true")
    p.set_defaults(func=cmd_history)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    from shared.errors import InvalidArgument
    out = {}
    for v in values:
        k, eq, val = v.partition("=")
        if not k:
            raise InvalidArgument(f"{what}: expected K=V, got {v!r}")
        out[k] = val if eq else os.environ.get(k, "")  # docker: `--build-arg K` takes K from the env
    return out


def _secrets(values: list[str]) -> list[Any]:
    from shared.errors import InvalidArgument
    from shared.messages.builder import SecretRef
    out = []
    for v in values:
        fields = dict(part.partition("=")[::2] for part in v.split(","))
        sid = fields.get("id", "")
        src = fields.get("src") or fields.get("source")
        if not sid:
            raise InvalidArgument(f"--secret {v!r}: an id is required")
        if src:
            try:
                with open(os.path.expanduser(src), "rb") as f:
                    data = f.read()
            except OSError as e:
                raise InvalidArgument(f"--secret {sid}: {e}") from e
        elif fields.get("env") or sid in os.environ:
            data = os.environ.get(fields.get("env") or sid, "").encode()
        else:
            raise InvalidArgument(f"--secret {v!r}: give src=FILE or env=VAR")
        out.append(SecretRef(id=sid, data=data))
    return out


async def _upload(ctx: Any, *groups: list[tuple[str, str, int]]) -> None:
    """Push (path, digest, size) blobs to the context repository, group after group; those it has are not sent."""
    import asyncio

    import aiohttp

    from shared.messages.builder import CONTEXT_REPOSITORY
    from shared.registry.auth import bus_token_provider
    from shared.registry.client import RegistryClient
    b = await ctx.bus()
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session, ctx.config.registry_base_url,
                                token_provider=bus_token_provider(b, "cli"))
        for blobs in groups:
            await asyncio.gather(*(client.push_blob(CONTEXT_REPOSITORY, digest, size, path)
                                   for path, digest, size in blobs))


async def cmd_build(args: argparse.Namespace, ctx: Any) -> int:
    import asyncio

    from shared import subjects
    from shared.buildcontext import DOCKERIGNORE, context_excludes, pack_context
    from shared.errors import InvalidArgument
    from shared.messages.builder import BuildReply, BuildRequest

    root = os.path.abspath(args.context)
    if not os.path.isdir(root):
        raise InvalidArgument(f"context {args.context!r} is not a directory")
    dockerfile = os.path.abspath(args.file) if args.file else os.path.join(root, "Dockerfile")
    try:
        with open(dockerfile, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InvalidArgument(f"cannot read Dockerfile: {e}") from e
    ignore = None
    if os.path.exists(os.path.join(root, DOCKERIGNORE)):
        with open(os.path.join(root, DOCKERIGNORE), encoding="utf-8") as f:
            ignore = f.read()
    rel = os.path.relpath(dockerfile, root)
    excludes = context_excludes(ignore, rel)
    with tempfile.NamedTemporaryFile(prefix="dockyard-context-", suffix=".tar") as tmp:
        external: dict[str, str] = {}
        digest, size = await asyncio.to_thread(pack_context, root, tmp, excludes, external=external)
        tmp.flush()
        # Big files first: the context tar names them, so they must be there when it is.
        await _upload(ctx, [(p, d, os.path.getsize(p)) for d, p in external.items()], [(tmp.name, digest, size)])
    req = BuildRequest(context=digest, dockerfile=text, dockerfile_name=os.path.basename(dockerfile),
                       tags=args.tag, build_args=_pairs(args.build_arg, "--build-arg"), target=args.target,
                       no_cache=args.no_cache, secrets=_secrets(args.secret), compression=args.compression,
                       network=args.network, labels=_pairs(args.label, "--label"))
    quiet = args.quiet or ctx.json_output

    def show(p: Any) -> None:
        if quiet:
            return
        if p.kind == "step":
            sys.stderr.write(f"#{p.step} {p.message}\n")
        elif p.kind == "output":
            sys.stderr.write(f"#{p.step} {p.message}\n")
        elif p.kind == "warning":
            sys.stderr.write(f"WARNING: {p.message}\n")
        else:
            sys.stderr.write(f"{p.message}\n")

    b = await ctx.bus()
    reply = await b.request_with_progress(subjects.BUILD, req, BuildReply, show, timeout=3600)
    if ctx.json_output:
        ctx.print_json(reply)
    else:
        if not args.quiet:
            for t in reply.tags:
                sys.stderr.write(f"naming to {t}\n")
        print(reply.digest)
    return 0


async def cmd_import(args: argparse.Namespace, ctx: Any) -> int:
    import asyncio
    import hashlib

    from shared import subjects
    from shared.errors import InvalidArgument
    from shared.messages.builder import ImportReply, ImportRequest

    def digest_of(path: str) -> tuple[str, int]:
        h, n = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
        return "sha256:" + h.hexdigest(), n

    try:
        digest, size = await asyncio.to_thread(digest_of, args.tarball)
    except OSError as e:
        raise InvalidArgument(f"cannot read {args.tarball}: {e}") from e
    await _upload(ctx, [(args.tarball, digest, size)])
    b = await ctx.bus()
    reply = await b.request(subjects.BUILD_IMPORT, ImportRequest(source=digest, tag=args.name, changes=args.change,
                                                                 message=args.message), ImportReply, timeout=600)
    if ctx.json_output:
        ctx.print_json(reply)
    else:
        print(reply.digest)
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n}B"


async def cmd_history(args: argparse.Namespace, ctx: Any) -> int:
    from shared import subjects
    from shared.messages.builder import HistoryReply, HistoryRequest
    b = await ctx.bus()
    reply = await b.request(subjects.BUILD_HISTORY, HistoryRequest(image=args.image), HistoryReply, timeout=300)
    if ctx.json_output:
        ctx.print_json(reply)
        return 0
    rows = []
    for e in reply.entries:
        by = e.created_by if args.no_trunc or len(e.created_by) <= 60 else e.created_by[:57] + "..."
        rows.append([e.layer.short if e.layer else "<missing>", e.created or "", by,
                     _size(e.size), _size(e.wasted) if e.wasted else ""])
    ctx.print_table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "WASTED"], rows)
    return 0
