"""`dockyard images|tag|push|pull|rmi`: the image verbs, docker's way.

The stack registry plays docker's local image store: unqualified names live there,
and `tag`/`push`/`pull` copy to and from other registries (with the credentials of
`dockyard login`), keeping a foreign image under its repository path in the stack.
"""

from __future__ import annotations

import argparse
import sys
import time

from services.cli import listing, progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("images", help="list images in the stack registry")
    p.add_argument("repository", nargs="?", default="")
    p.add_argument("-a", "--all", action="store_true", help="also untagged (dangling) images")
    p.add_argument("--digests", action="store_true", help="show manifest digests")
    p.add_argument("--host", metavar="AGENT", help="the images a runtime-agent has pulled, instead of the registry's")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")  # runflags
    p.add_argument("--format", help="a Go template ({{.Repository}}:{{.Tag}}), table TEMPLATE, or json")
    p.set_defaults(func=images, loopless=True)  # cli11: read-only bus verbs (shared.bus_blocking)

    p = sub.add_parser("tag", help="give an image another name (copying it if in another registry)")
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(func=tag)

    for name, hlp in (("push", "send an image to its registry"), ("pull", "bring an image into the stack")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("reference")
        p.add_argument("--insecure", action="store_true", default=None,
                       help="plain http to the other registry (default: only for loopback)")
        p.add_argument("-q", "--quiet", action="store_true")
        progress.add_flag(p)
        p.set_defaults(func=push if name == "push" else pull)

    p = sub.add_parser("rmi", help="remove images by name or unique id prefix")
    p.add_argument("references", nargs="+")
    p.add_argument("-f", "--force", action="store_true", help="remove every tag of an image named by id")
    p.set_defaults(func=rmi)


# ---- formatting ----------------------------------------------------------------------

def human_size(n: int) -> str:
    """docker's decimal sizes: 1.23MB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{n}B"
        n /= 1000
    return f"{n}B"


def human_ago(created: str, now: float | None = None) -> str:
    from datetime import datetime
    if not created:
        return "N/A"
    try:
        t = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return created
    s = max(0, (now or time.time()) - t)
    for size, unit in ((365 * 86400, "year"), (30 * 86400, "month"), (7 * 86400, "week"), (86400, "day"),
                       (3600, "hour"), (60, "minute"), (1, "second")):
        if s >= size:
            k = int(s // size)
            return f"{k} {unit}{'s' if k > 1 else ''} ago"
    return "Less than a second ago"


def familiar_repository(repo: str) -> str:
    return repo[len("library/"):] if repo.startswith("library/") and repo.count("/") == 1 else repo


# ---- references ----------------------------------------------------------------------

def _parse(text: str):
    from shared.oci.reference import Reference
    return Reference.parse(text)


def _credentials(domain: str):
    from shared.messages.auth import RegistryCredentials
    from shared.registry import CredentialStore
    c = CredentialStore().get(domain)
    return RegistryCredentials(username=c.username, password=c.password) if c else None


def _say(ctx, text: str, quiet: bool = False) -> None:
    if not quiet and not ctx.json_output:
        print(text)


async def _copy(ctx, source: str, destination: str, *, src_domain: str | None, dst_domain: str | None,
                insecure: bool | None, verb: str, quiet: bool, progress: str = "auto"):
    """REGISTRY_COPY with the user's credentials for the foreign side, showing progress per
    layer on stderr (services.cli.progress)."""
    from services.cli import progress as pg
    from shared import subjects
    from shared.messages.auth import CopyReply, CopyRequest
    bus = await ctx.bus()
    states = {"copying": pg.ACTIVE, "copied": pg.DONE, "exists": pg.EXISTS, "mounted": pg.MOUNTED}
    reporter = pg.Reporter(pg.mode_for(progress, quiet=quiet, json_output=ctx.json_output), verb=verb)

    def on_progress(p) -> None:
        short, _, event = p.message.partition(": ")
        if event in states:
            reporter.transfer(short, states[event], p.current, p.total)

    req = CopyRequest(source=source, destination=destination,
                      source_credentials=_credentials(src_domain) if src_domain else None,
                      destination_credentials=_credentials(dst_domain) if dst_domain else None,
                      insecure=insecure)
    with reporter:
        return await bus.request_with_progress(subjects.REGISTRY_COPY, req, CopyReply, on_progress, timeout=3600)


async def _stack_digest(ctx, ref) -> str:
    """The digest a stack reference points at; NotFound if it names nothing."""
    from shared import subjects
    from shared.errors import NotFound
    from shared.messages.registry import ImagesReply, ImagesRequest
    reply = await (await ctx.bus()).request(subjects.REGISTRY_IMAGES,
                                            ImagesRequest(repository=ref.repository, all=bool(ref.digest)),
                                            ImagesReply)
    for img in reply.images:
        if img.repository == ref.path and (img.digest == ref.digest if ref.digest
                                          else img.tag == (ref.tag or "latest")):
            return img.digest
    raise NotFound(f"no such image: {ref.familiar()}")


# ---- verbs ---------------------------------------------------------------------------

async def images(args, ctx) -> int:
    if args.host:
        return await _agent_images(args, ctx)
    from shared import subjects
    from shared.messages.registry import ImagesReply, ImagesRequest
    repo = ""
    if args.repository:
        from shared.registry.stackref import is_stack  # the shared.registry package loads aiohttp
        ref = _parse(args.repository)
        repo = ref.repository if is_stack(ref, ctx.config) else ""
    reply = await (await ctx.bus()).request(subjects.REGISTRY_IMAGES, ImagesRequest(repository=repo, all=args.all),
                                            ImagesReply)
    if ctx.json_output:
        ctx.print_json(reply.images)
        return 0
    headers = ["REPOSITORY", "TAG"] + (["DIGEST"] if args.digests else []) + ["IMAGE ID", "CREATED", "SIZE"]
    rows, fields = [], []
    for img in reply.images:
        row = [familiar_repository(img.repository), img.tag or "<none>"]
        if args.digests:
            row.append(img.digest)
        row += [(img.image_id or img.digest).short, human_ago(img.created), human_size(img.size)]
        rows.append(row)
        fields.append(listing.image_fields(repository=row[0], tag=row[1], digest=str(img.digest), image_id=row[-3],
                                           created=img.created, since=row[-2], size=row[-1]))
    if not listing.show(args, fields, listing.IMAGE_HEADERS):
        ctx.print_table(headers, rows)
    return 0


async def _agent_images(args, ctx) -> int:
    """`images --host AGENT`: what that agent holds locally (the garbage-collector prunes these)."""
    from services.cli.commands.containers import agent_images
    from shared.oci.digest import Digest
    records = await agent_images(ctx, args.host)
    if ctx.json_output:
        ctx.print_json(records)
        return 0
    headers = ["REFERENCE"] + (["DIGEST"] if args.digests else []) + ["IMAGE ID", "CREATED", "SIZE"]
    rows, fields = [], []
    for r in records:
        for name in r.references or ["<none>"]:
            row = [name] + ([r.digest] if args.digests else [])
            rows.append(row + [Digest(r.config_digest or r.digest).short, human_ago(r.created), human_size(r.size)])
            repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "<none>")
            fields.append(listing.image_fields(repository=repo, tag=tag, digest=r.digest, image_id=rows[-1][-3],
                                               created=r.created, since=rows[-1][-2], size=rows[-1][-1]))
    if not listing.show(args, fields, listing.IMAGE_HEADERS):
        ctx.print_table(headers, rows)
    return 0


async def tag(args, ctx) -> int:
    from shared import subjects
    from shared.errors import InvalidArgument
    from shared.messages.registry import TagReply, TagRequest
    from shared.registry.stackref import is_stack, local_name
    src, dst = _parse_source(args.source), _parse(args.target)
    if dst.digest:
        raise InvalidArgument(f"{args.target}: a tag target cannot pin a digest")
    dst = dst if dst.tag else dst.with_tag("latest")
    # The gateway takes stack names as given (it drops the stack's own address itself).
    local_dst = str(dst) if is_stack(dst, ctx.config) else local_name(dst.with_domain(None))
    if src is not None and not is_stack(src, ctx.config):
        # From another registry: bring it in under the target's name (pull + tag).
        reply = await _copy(ctx, str(src), local_dst, src_domain=src.domain, dst_domain=None, insecure=None,
                            verb="Pull", quiet=True)
        digest = reply.digest
    else:
        source = str(src) if src is not None else args.source  # else: an image id prefix
        reply = await (await ctx.bus()).request(subjects.REGISTRY_TAG, TagRequest(source=source, target=local_dst),
                                                TagReply)
        digest = reply.digest
    if not is_stack(dst, ctx.config):
        # docker's `tag` names a local image; here the name also exists where it says.
        await _copy(ctx, local_dst, str(dst), src_domain=None, dst_domain=dst.domain, insecure=None,
                    verb="Push", quiet=True)
    if ctx.json_output:
        ctx.print_json({"target": str(dst), "digest": digest})
    return 0


def _parse_source(text: str):
    """A reference, or None for text that may be an image id prefix (the gateway resolves it)."""
    import re
    if re.fullmatch(r"(sha256:)?[0-9a-f]{3,64}", text):
        return None
    return _parse(text)


async def push(args, ctx) -> int:
    from shared.registry.stackref import is_stack, local_name
    ref = _parse(args.reference)
    ref = ref if ref.tag or ref.digest else ref.with_tag("latest")
    if is_stack(ref, ctx.config):
        digest = await _stack_digest(ctx, ref)
        _say(ctx, f"{ref.familiar()} is in the stack registry ({ctx.config.registry_addr}) already", args.quiet)
    else:
        _say(ctx, f"The push refers to repository [{ref.repository}]", args.quiet)
        reply = await _copy(ctx, local_name(ref.with_domain(None)), str(ref), src_domain=None,
                            dst_domain=ref.domain, insecure=args.insecure, verb="Push", quiet=args.quiet,
                            progress=args.progress)
        digest = reply.digest
    if ctx.json_output:
        ctx.print_json({"reference": str(ref), "digest": digest})
    else:
        _say(ctx, f"{ref.tag}: digest: {digest}" if ref.tag else f"digest: {digest}")
    return 0


async def pull(args, ctx) -> int:
    from shared.registry.stackref import is_stack, local_name
    ref = _parse(args.reference)
    ref = ref if ref.tag or ref.digest else ref.with_tag("latest")
    if is_stack(ref, ctx.config):
        digest = await _stack_digest(ctx, ref)
        status = "Image is up to date for"
    else:
        _say(ctx, f"{ref.tag or ref.digest}: Pulling from {ref.repository}", args.quiet)
        reply = await _copy(ctx, str(ref), local_name(ref.with_domain(None)), src_domain=ref.domain,
                            dst_domain=None, insecure=args.insecure, verb="Pull", quiet=args.quiet,
                            progress=args.progress)
        digest = reply.digest
        status = "Downloaded newer image for" if reply.blobs_copied else "Image is up to date for"
    if ctx.json_output:
        ctx.print_json({"reference": str(ref), "digest": digest})
    else:
        _say(ctx, f"Digest: {digest}\nStatus: {status} {ref.familiar()}", args.quiet)
        print(ref)
    return 0


async def rmi(args, ctx) -> int:
    from shared import subjects
    from shared.errors import DockyardError, InvalidArgument, PermissionDenied
    from shared.messages.registry import RmiReply, RmiRequest
    from shared.registry.stackref import is_stack
    bus = await ctx.bus()
    failed = 0
    results = []
    for text in args.references:
        try:
            ref = _parse_source(text)
            if ref is not None and not is_stack(ref, ctx.config):
                raise InvalidArgument(f"{text}: rmi removes images of the stack registry only")
            name = str(ref) if ref is not None else text
            reply = await bus.request(subjects.REGISTRY_RMI, RmiRequest(reference=name, force=args.force), RmiReply)
        except PermissionDenied:
            raise  # the verb is refused, not this image
        except DockyardError as e:
            failed += 1
            ctx.error(f"{text}: {e.message}")
            continue
        results.append(reply)
        if not ctx.json_output:
            for u in reply.untagged:
                print(f"Untagged: {u}")
            for d in reply.deleted:
                print(f"Deleted: {d}")
    if ctx.json_output:
        ctx.print_json(results)
    return 1 if failed else 0
