"""`dockyard build`, `import` and `history`: the builder's verbs from the command line.

The context is packed here (respecting `.dockerignore`), uploaded once to the
stack registry as a blob (an unchanged context has the same digest and is not
sent again), and the build request names it. A per-context cache (by stat, see
`DigestCache`) spares an unchanged context its tar and its big files their
hashing; the builder says which blobs the registry lacks, so a rebuild that
sends nothing never loads the HTTP client. Heavy imports wait until a
handler runs, so `dockyard ps` never pays for them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build an image from a Dockerfile")
    p.add_argument("context", help="the build context directory, or - for a tar (or a Dockerfile) on stdin")
    p.add_argument("-t", "--tag", action="append", default=[], help="name:tag (repeatable)")
    p.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile; - for stdin)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    p.add_argument("--target", default="", help="the stage to build")
    p.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    p.add_argument("--secret", action="append", default=[], metavar="id=X,src=FILE")
    p.add_argument("--progress", choices=("auto", "tty", "plain", "json", "quiet"), default="auto",
                   help="tty: a line per step with a spinner, plain: BuildKit's plain lines, json: JSON lines")
    p.add_argument("--compression", choices=("gzip", "zstd"), default="gzip")
    p.add_argument("--network", choices=("default", "none", "host"), default="default")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image digest")
    p.add_argument("--check", action="store_true",
                   help="run the build checks only, build nothing (exit 1 if any warning)")
    p.add_argument("-o", "--output", action="append", default=[], metavar="type=TYPE[,dest=PATH]",
                   help="image (default), registry, local, tar, oci or docker")
    p.add_argument("--iidfile", help="write the image id (config digest) to this file")
    p.add_argument("--metadata-file", help="write BuildKit's build result keys as JSON to this file")
    p.add_argument("--no-cache-filter", action="append", default=[], metavar="STAGE",
                   help="do not use the cache for this stage (repeatable, or comma-separated)")
    p.add_argument("--pull", action="store_true", help="look base images up again (the builder always does)")
    p.add_argument("--cache-to", action="append", default=[], metavar="type=registry,ref=REPO:TAG[,mode=max]",
                   help="export the build cache (or type=inline: in the image's config)")
    p.add_argument("--cache-from", action="append", default=[], metavar="type=registry,ref=REPO:TAG",
                   help="import a build cache (a --cache-to artifact or an image with an inline cache)")
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


SMALL_UPLOAD = 16 << 20  # blobs up to this size go in one POST (see _post_blob)


async def _post_blob(ctx: Any, path: str, digest: str, size: int) -> bool:
    """A monolithic upload (one `POST ?digest=`) over a bare HTTP/1.1 connection; False: use the full client.

    A changed context is a small tar: importing aiohttp and running the
    HEAD/POST/PUT dance would cost more than sending it. Anything unusual (TLS,
    a challenge, a redirect, a registry without monolithic POST) is left to
    RegistryClient, which handles it.
    """
    import asyncio
    from urllib.parse import urlsplit

    from shared import subjects
    from shared.messages.auth import TokenReply, TokenRequest
    from shared.messages.builder import CONTEXT_REPOSITORY
    url = urlsplit(ctx.config.registry_base_url)
    if url.scheme != "http" or size > SMALL_UPLOAD or not url.hostname:
        return False
    b = await ctx.bus()
    token = await b.request(subjects.REGISTRY_TOKEN, TokenRequest(
        account="cli", scopes=[f"repository:{CONTEXT_REPOSITORY}:pull,push"]), TokenReply)
    with open(path, "rb") as f:
        body = f.read()
    if len(body) != size:
        return False
    head = (f"POST {url.path.rstrip('/')}/v2/{CONTEXT_REPOSITORY}/blobs/uploads/?digest={digest} HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\nAuthorization: Bearer {token.token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
            "Connection: close\r\n\r\n").encode()

    async def send() -> bytes:
        reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
        try:
            writer.write(head + body)
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()

    try:
        status = (await asyncio.wait_for(send(), timeout=120)).split(b" ", 2)
    except (OSError, asyncio.TimeoutError):
        return False
    return len(status) > 1 and status[1] == b"201"


async def _upload(ctx: Any, *groups: list[tuple[str, str, int]]) -> None:
    """Push (path, digest, size) blobs to the context repository, group after group; those it has are not sent."""
    import asyncio

    from shared import http_client
    from shared.messages.builder import CONTEXT_REPOSITORY
    from shared.registry.auth import bus_token_provider
    from shared.registry.client import RegistryClient
    b = await ctx.bus()
    async with http_client.session(ctx.config.fleet_ca) as session:
        client = RegistryClient(session, ctx.config.registry_base_url,
                                token_provider=bus_token_provider(b, "cli"))
        for blobs in groups:
            await asyncio.gather(*(client.push_blob(CONTEXT_REPOSITORY, digest, size, path)
                                   for path, digest, size in blobs))


def _digest_cache_path(ctx: Any, root: str) -> str | None:
    """One digest cache per context dir: `$XDG_CACHE_HOME/dockyard`, else the CLI's data dir."""
    import hashlib
    base = os.environ.get("XDG_CACHE_HOME")
    base = os.path.join(base, "dockyard") if base else os.path.join(str(ctx.config.data_dir), "cli-cache")
    name = hashlib.sha256(root.encode()).hexdigest()[:32]
    return os.path.join(base, "context-digests", name + ".json")


async def _missing(ctx: Any, digests: list[str]) -> list[str]:
    """The blobs the stack registry lacks, asked over the bus (no HTTP client needed when none)."""
    from shared.messages.builder import ContextMissingReply, ContextMissingRequest
    from shared.subjects import BUILD_CONTEXT_MISSING
    b = await ctx.bus()
    reply = await b.request(BUILD_CONTEXT_MISSING, ContextMissingRequest(digests=digests), ContextMissingReply,
                            timeout=60)
    return [str(d) for d in reply.missing]


def _pack(root: str, out: Any, excludes: list[str], cache: Any) -> tuple[str, int, dict[str, str]]:
    """Write the context tar to `out`: (digest, size, the big files it names by digest)."""
    from shared.buildcontext import pack_context
    out.seek(0)
    out.truncate()
    external: dict[str, str] = {}
    digest, size = pack_context(root, out, excludes, external=external, digests=cache)
    out.flush()
    return digest, size, external


async def _send_context(ctx: Any, root: str, excludes: list[str], cache: Any, signature: str, racy: bool,
                        packed: tuple[str, int, dict[str, str]] | None) -> str:
    """Make sure the stack registry holds the context and the big files it names; its digest."""
    with tempfile.NamedTemporaryFile(prefix="dockyard-context-", suffix=".tar") as tmp:
        if packed is None:
            digest, size, external = _pack(root, tmp, excludes, cache)
            if not racy:
                cache.remember(signature, digest, size, external)
            cache.save()
        else:  # unchanged since it was last packed: the tar is only written if it must travel
            digest, size, external = packed
        missing = set(await _missing(ctx, [*external, digest]))
        if digest in missing and packed is not None:
            digest, size, external = _pack(root, tmp, excludes, cache)
            cache.save()
            missing = set(await _missing(ctx, [*external, digest]))
        big = [(p, d, os.path.getsize(p)) for d, p in external.items() if d in missing]
        if big:  # first: the context tar names them, so they must be there when it is
            await _upload(ctx, big)
        if digest in missing and not await _post_blob(ctx, tmp.name, digest, size):
            await _upload(ctx, [(tmp.name, digest, size)])
    return digest


async def cmd_build(args: argparse.Namespace, ctx: Any) -> int:
    from shared import subjects
    from shared.buildcontext import DOCKERIGNORE, DigestCache, context_excludes, context_signature
    from shared.errors import InvalidArgument
    from shared.messages.builder import BuildReply, BuildRequest, CheckReply
    from shared.oci.digest import Digest
    from services.cli.commands import build_outputs as bo

    outputs = [bo.parse_output(o) for o in args.output]
    if args.file == "-" and args.context == "-":
        raise InvalidArgument("the Dockerfile and the context cannot both come from stdin")
    with tempfile.TemporaryDirectory(prefix="dockyard-stdin-") as tmp:
        stdin_text = None
        if args.context == "-":
            root, stdin_text = bo.context_from_stdin(Path(tmp))
        else:
            root = os.path.abspath(args.context)
        if not os.path.isdir(root):
            raise InvalidArgument(f"context {args.context!r} is not a directory")
        if args.file == "-" or stdin_text is not None:
            text = stdin_text if stdin_text is not None else sys.stdin.read()
            dockerfile = os.path.join(root, "Dockerfile")
            inside = ""  # not a file of the context: nothing to keep or to hide in it
        else:
            if not args.file:
                dockerfile = os.path.join(root, "Dockerfile")
            elif args.context == "-":
                dockerfile = os.path.join(root, args.file)  # a path in the tar
            else:
                dockerfile = os.path.abspath(args.file)
            try:
                with open(dockerfile, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise InvalidArgument(f"cannot read Dockerfile: {e}") from e
            rel = os.path.relpath(dockerfile, root)
            inside = rel.replace(os.sep, "/") if not rel.startswith("..") else ""
        ignore = None
        if os.path.exists(os.path.join(root, DOCKERIGNORE)):
            with open(os.path.join(root, DOCKERIGNORE), encoding="utf-8") as f:
                ignore = f.read()
        # A Dockerfile from stdin is no file of the context: only `.dockerignore` is always kept.
        excludes = context_excludes(ignore, inside or DOCKERIGNORE)
        tags = list(args.tag) + [n for o in outputs if o.type in ("image", "registry") for n in o.names]
        fields = dict(dockerfile=text, dockerfile_name=os.path.basename(dockerfile), dockerfile_path=inside,
                      tags=tags, build_args=_pairs(args.build_arg, "--build-arg"), target=args.target,
                      no_cache=args.no_cache, secrets=_secrets(args.secret), compression=args.compression,
                      network=args.network, labels=_pairs(args.label, "--label"),
                      no_cache_filter=[s for f in args.no_cache_filter for s in f.split(",") if s],
                      cache_to=args.cache_to, cache_from=args.cache_from)
        cache = DigestCache(_digest_cache_path(ctx, root) if args.context != "-" else None)
        signature, racy = context_signature(root, excludes)
        digest = await _send_context(ctx, root, excludes, cache, signature, racy, cache.packed(signature))
    from services.cli import progress as pg
    reporter = pg.reporter_for(args, ctx)

    def show(p: Any) -> None:
        if p.kind == "step":
            cached = p.message.startswith("CACHED ")
            reporter.step(p.step, p.total_steps, p.message[len("CACHED "):] if cached else p.message, cached)
        elif p.kind == "output":
            reporter.output(p.step, p.message)
        elif p.kind == "warning":
            reporter.warning(p.message)
        else:
            reporter.log(p.message)

    b = await ctx.bus()
    if args.check:
        return _print_check(ctx, await b.request(subjects.BUILD_CHECK, BuildRequest(context=Digest(digest), **fields),
                                                 CheckReply, timeout=600))
    with reporter:
        reply = await b.request_with_progress(subjects.BUILD, BuildRequest(context=Digest(digest), **fields),
                                              BuildReply, show, timeout=3600)
    await bo.export(ctx, reply, outputs)
    bo.write_ids(reply, args.iidfile, args.metadata_file)
    to_stdout = any(o.dest == "-" for o in outputs)  # stdout carries the output: say the rest on stderr
    if ctx.json_output and not to_stdout:
        ctx.print_json(reply)
    else:
        if not args.quiet:
            for t in reply.tags:
                sys.stderr.write(f"naming to {t}\n")
        print(reply.digest, file=sys.stderr if to_stdout else sys.stdout)
    return 0


def _print_check(ctx: Any, reply: Any) -> int:
    """`build --check` output in buildx's shape; non-zero when something was found."""
    if ctx.json_output:
        ctx.print_json(reply)
        return 1 if reply.warnings else 0
    n = len(reply.warnings)
    if not n:
        print("Check complete, no warnings found.")
        return 0
    print(f"Check complete, {n} warning{'s have' if n > 1 else ' has'} been found!")
    for w in reply.warnings:
        print(f"\nWARNING: {w.rule or w.kind}{' - ' + w.url if w.url else ''}\n{w.message}")
        if w.file:
            print(f"{w.file}:{w.line}")
    return 1


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
