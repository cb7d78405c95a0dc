"""`cp` (both ways, `-` for a tar stream) and `export`: bytes between here and a container.

An agent on our loopback answers with a grant on its copy plane, and the tar goes over
HTTP (services/cli/copy_plane.py). Otherwise the agent drives the stream on the bus
(services/runtime_agent/verbs/streams.py): for bytes out of the container it sends
chunks as requests to our inbox and each answer is our ack; for bytes in, it asks our
inbox for each chunk. Either way we hold a few chunks at most: files are read and
written in a thread through a bounded queue.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

_QUEUE = 8


def register(sub: Any) -> None:
    p = sub.add_parser("cp", help="copy files between a container and here (CONTAINER:PATH, - for a tar)")
    p.add_argument("-a", "--archive", action="store_true", help="keep uid/gid of the files")
    p.add_argument("-L", "--follow-link", action="store_true", help="follow a symlink given as SRC")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dest", metavar="DEST")
    p.set_defaults(func=cp)

    p = sub.add_parser("commit", help="a new image from a container's changes, pushed to the stack registry")
    p.add_argument("-a", "--author")
    p.add_argument("-c", "--change", action="append", default=[], metavar="INSTRUCTION",
                   help="CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR, STOPSIGNAL or VOLUME")
    p.add_argument("-m", "--message")
    p.add_argument("-p", "--pause", default=True, action=argparse.BooleanOptionalAction,
                   help="freeze the container while its layer is written (default)")
    p.add_argument("container")
    p.add_argument("repository", metavar="REPOSITORY[:TAG]")
    p.set_defaults(func=commit)

    p = sub.add_parser("export", help="a container's filesystem as a tar")
    p.add_argument("-o", "--output", help="write to this file (default: stdout)")
    p.add_argument("container")
    p.set_defaults(func=export)


def split_container(arg: str) -> tuple[str, str] | None:
    """docker's rule: `NAME:PATH` names a container unless the part before ':' has a '/'
    or the argument starts with '/' or '.' (`./a:b` is a local file)."""
    if arg.startswith(("/", ".")):
        return None
    name, colon, path = arg.partition(":")
    if not colon or "/" in name or not name:
        return None
    return name, path or "/"


class _Sink:
    """Chunks the agent sends us, each acknowledged once `write` (in a thread) took it."""

    def __init__(self, client, write, finish=lambda: None):
        import asyncio
        self.client, self.write, self.finish = client, write, finish
        self.inbox = client.nc.new_inbox()
        self.done = asyncio.get_running_loop().create_future()
        self.sub = None

    async def __aenter__(self) -> "_Sink":
        import asyncio

        from shared import codec
        from shared.messages.verbs import ChunkAck, chunk_of

        async def on_msg(msg) -> None:
            c = chunk_of(msg.data, msg.headers)
            err = ""
            try:
                if c.data:
                    await asyncio.to_thread(self.write, c.data)
                if c.end:
                    await asyncio.to_thread(self.finish)
            except Exception as e:  # noqa: BLE001 - told to the agent, which stops sending
                err = str(e) or type(e).__name__
            if msg.reply:
                await msg.respond(codec.encode(ChunkAck(seq=c.seq, error=err)))
            if (c.end or err or c.error) and not self.done.done():
                self.done.set_result(err or c.error)

        self.sub = await self.client.nc.subscribe(self.inbox, cb=on_msg)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


class _Source:
    """Answers the agent's ChunkWant with the next chunk `read` (in a thread) gives; b"" ends."""

    def __init__(self, client, read):
        self.client, self.read = client, read
        self.inbox = client.nc.new_inbox()
        self.ended = False
        self.sub = None

    async def __aenter__(self) -> "_Source":
        import asyncio

        from shared import codec
        from shared.messages.verbs import Chunk, ChunkWant, chunk_headers
        dec = codec.decoder(ChunkWant)

        async def on_msg(msg) -> None:
            want = dec.decode(msg.data)
            if self.ended:
                out = Chunk(seq=want.seq, end=True)
            else:
                try:
                    data = await asyncio.to_thread(self.read)
                    out = Chunk(seq=want.seq, data=data, end=not data)
                except Exception as e:  # noqa: BLE001 - the agent hears why and stops
                    out = Chunk(seq=want.seq, end=True, error=str(e) or type(e).__name__)
                self.ended = out.end
            if msg.reply and want.raw:
                await self.client.nc.publish(msg.reply, out.data, headers=chunk_headers(out))
            elif msg.reply:  # an older agent reads JSON chunks only
                await msg.respond(codec.encode(out))

        self.sub = await self.client.nc.subscribe(self.inbox, cb=on_msg)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


class _Pipe:
    """A bounded queue between the bus side and a tar thread: chunks in, a file out."""

    def __init__(self):
        import queue
        self.q: "queue.Queue[bytes | None]" = queue.Queue(maxsize=_QUEUE)
        self.buf = b""
        self.eof = False

    # the writing side
    def put(self, data: bytes) -> None:
        self.q.put(data)

    def close(self) -> None:
        self.q.put(None)

    # the reading side (a file for tarfile)
    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while (n < 0 or len(out) < n) and not (self.eof and not self.buf):
            if not self.buf:
                item = self.q.get()
                if item is None:
                    self.eof = True
                    continue
                self.buf = item
            take = len(self.buf) if n < 0 else min(n - len(out), len(self.buf))
            out += self.buf[:take]
            self.buf = self.buf[take:]
        return bytes(out)


class _Feed:
    """`consume(file)` in a thread of its own over the chunks written to us, started by the first."""

    def __init__(self, consume):
        import threading
        self.pipe = _Pipe()
        self.result, self.error = None, None

        def run() -> None:
            try:
                self.result = consume(self.pipe)
            except BaseException as e:  # noqa: BLE001 - raised by write() and outcome()
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.lock = threading.Lock()

    def _start(self) -> None:
        with self.lock:
            if self.thread.ident is None:
                self.thread.start()

    def write(self, data: bytes) -> None:
        import queue
        self._start()
        while True:  # a consumer that failed reads no more: its error, not a wait for ever
            if self.error is not None:
                raise self.error
            try:
                self.pipe.q.put(data, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        self.write(None)

    async def outcome(self):
        """What `consume` returned (or raise its error), once the stream ended."""
        import asyncio
        await asyncio.to_thread(self.thread.join)
        if self.error is not None:
            raise self.error
        return self.result

    async def close(self) -> None:
        import asyncio
        import queue
        if self.thread.is_alive():  # an early end (an error): the consumer sees the end of its input
            try:
                self.pipe.q.put_nowait(None)
            except queue.Full:
                pass  # it is still reading: it will not wait long for the rest
            await asyncio.to_thread(self.thread.join, 5)


class _ChunkedTar:
    """A tar being written in a thread, read back in CHUNKs (bounded: the writer waits)."""

    def __init__(self, produce):
        import threading

        from shared.tarcopy import CHUNK
        self.pipe = _Pipe()
        self.chunk = CHUNK
        self.error: BaseException | None = None
        pending = bytearray()
        pipe = self.pipe

        class W:
            def write(self, b) -> int:
                pending.extend(b)
                while len(pending) >= CHUNK:
                    pipe.put(bytes(pending[:CHUNK]))
                    del pending[:CHUNK]
                return len(b)

            def flush(self) -> None:
                pass

        def run() -> None:
            try:
                produce(W())
                if pending:
                    pipe.put(bytes(pending))
            except BaseException as e:  # noqa: BLE001 - read() raises it on the bus side
                self.error = e
            finally:
                pipe.close()

        self.thread = threading.Thread(target=run, daemon=True)

    def read(self) -> bytes:
        if self.thread.ident is None:
            self.thread.start()  # on the bus's first ask (a copy-plane copy never asks)
        item = self.pipe.q.get()
        if item is None:
            if self.error is not None:
                raise self.error
            self.pipe.q.put(None)  # later reads see the end too
            return b""
        return item


async def cp(args, ctx) -> int:
    from shared.errors import InvalidArgument
    src, dest = split_container(args.src), split_container(args.dest)
    if src and dest:
        raise InvalidArgument("copying between containers is not supported")
    if not src and not dest:
        raise InvalidArgument("must specify at least one container source")
    if src:
        return await _from_container(args, ctx, *src, args.dest)
    return await _to_container(args, ctx, args.src, *dest)


def _plane() -> str:
    """Our shared.locality token, so an agent on our loopback hands us its copy plane;
    DOCKYARD_CP_VIA=bus keeps the bytes on the bus (what a CLI on another host gets)."""
    from shared import locality
    return "" if os.environ.get("DOCKYARD_CP_VIA") == "bus" else locality.here()


async def _from_container(args, ctx, name: str, path: str, dest: str) -> int:
    import asyncio

    from services.cli import copy_plane
    from services.cli.commands.verbs import locate
    from shared import subjects, tarcopy
    from shared.errors import InvalidArgument, NotFound
    from shared.messages.verbs import VERB_CP_FROM, CopyFromReply, CopyFromRequest
    host, c = await locate(ctx, name)
    client = await ctx.bus()
    if dest == "-":
        def consume(f) -> int:
            return _copy(f, sys.stdout.buffer)
    else:
        top = "." if path.rstrip("/").endswith("/.") or path.strip("/") == "." else \
            (os.path.basename(path.rstrip("/")) or ".")
        if os.path.isdir(dest):
            root, rename = dest, None
        else:
            if dest.endswith("/"):
                raise NotFound(f"no such directory: {dest}")
            parent = os.path.dirname(os.path.abspath(dest))
            if not os.path.isdir(parent):
                raise NotFound(f"no such directory: {parent}")
            if top == ".":
                os.mkdir(dest)
                root, rename = dest, None
            else:
                root, rename = parent, (top, os.path.basename(os.path.abspath(dest)))
        owner = (os.getuid(), os.getgid())

        def consume(f) -> int:
            return tarcopy.extract(f, root, "/", rename=rename, keep_owner=args.archive, owner=owner)
    feed = _Feed(consume)  # the bus's chunks, if the agent sends them there
    try:
        async with _Sink(client, feed.write, feed.finish) as sink:
            req = CopyFromRequest(container=c.id, path=path, follow_link=args.follow_link,
                                  stream_inbox=sink.inbox, plane=_plane(), raw_chunks=True)
            reply = await client.request(subjects.agent(host, VERB_CP_FROM), req, CopyFromReply, timeout=3600)
            if reply.url:  # the agent's copy plane: one HTTP stream, nothing came on the bus
                copied = await asyncio.to_thread(copy_plane.get, reply.url, consume)
            else:
                err = await asyncio.wait_for(sink.done, 60)
                if err:
                    raise InvalidArgument(f"copy from {name}:{path} failed: {err}")
                copied = await feed.outcome()
    finally:
        await feed.close()
    if dest != "-" and not args.quiet:
        sys.stderr.write(f"Successfully copied {_human(copied)} to {dest}\n")
    return 0


async def _to_container(args, ctx, src: str, name: str, path: str) -> int:
    import asyncio

    from services.cli import copy_plane
    from services.cli.commands.verbs import locate
    from shared import subjects, tarcopy
    from shared.errors import NotFound
    from shared.messages.verbs import VERB_CP_TO, CopyToReply, CopyToRequest
    if src == "-":
        stdin = sys.stdin.buffer

        def produce(f) -> None:
            while data := stdin.read(tarcopy.CHUNK):
                f.write(data)
        read = lambda: stdin.read(tarcopy.CHUNK)  # noqa: E731
        base = ""
    else:
        full = os.path.abspath(src)
        if not os.path.lexists(full):
            raise NotFound(f"no such file or directory: {src}")
        contents = src.rstrip("/").endswith("/.") or src == "."
        if contents:
            root, rel, base = full, "/.", "."
        else:
            root, rel = os.path.dirname(full), "/" + os.path.basename(full)
            base = os.path.basename(full)

        def produce(f) -> None:
            tarcopy.write_tar(root, rel, f, follow_last=args.follow_link)
        read = _ChunkedTar(produce).read
    host, c = await locate(ctx, name)
    client = await ctx.bus()
    async with _Source(client, read) as source:
        req = CopyToRequest(container=c.id, path=path, src_base=base if base != "." else "",
                            copy_uid_gid=args.archive, stream_inbox=source.inbox, plane=_plane())
        reply = await client.request(subjects.agent(host, VERB_CP_TO), req, CopyToReply, timeout=3600)
    written = reply.written
    if reply.url:  # the agent's copy plane: the tar goes in one HTTP stream
        written = await asyncio.to_thread(copy_plane.put, reply.url, produce)
    if not args.quiet and src != "-":
        sys.stderr.write(f"Successfully copied {_human(written)} to {name}:{path}\n")
    return 0


async def export(args, ctx) -> int:
    import asyncio

    from services.cli import copy_plane
    from services.cli.commands.verbs import locate
    from shared import subjects
    from shared.errors import InvalidArgument
    from shared.messages.verbs import VERB_EXPORT, ExportReply, ExportRequest
    if not args.output and sys.stdout.isatty():
        raise InvalidArgument("cowardly refusing to save to a terminal. Use the -o flag or redirect")
    host, c = await locate(ctx, args.container)
    client = await ctx.bus()
    tmp = f"{args.output}.part" if args.output else ""
    out = open(tmp, "wb") if args.output else sys.stdout.buffer
    try:
        async with _Sink(client, out.write, out.flush) as sink:
            reply = await client.request(subjects.agent(host, VERB_EXPORT),
                                         ExportRequest(container=c.id, stream_inbox=sink.inbox, plane=_plane(),
                                                       raw_chunks=True),
                                         ExportReply, timeout=3600)
            if reply.url:  # the agent's copy plane
                await asyncio.to_thread(copy_plane.get, reply.url, lambda f: _copy(f, out))
            else:
                err = await asyncio.wait_for(sink.done, 60)
                if err:
                    raise InvalidArgument(f"export of {args.container} failed: {err}")
        if args.output:
            out.close()
            os.replace(tmp, args.output)
    finally:
        if args.output and not out.closed:
            out.close()
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return 0


async def commit(args, ctx) -> int:
    from services.cli.commands.verbs import locate
    from shared import subjects
    from shared.messages.verbs import VERB_COMMIT, CommitReply, CommitRequest
    host, c = await locate(ctx, args.container)
    client = await ctx.bus()
    req = CommitRequest(container=c.id, reference=args.repository, message=args.message or "",
                        author=args.author or "", changes=args.change, pause=args.pause)
    r = await client.request(subjects.agent(host, VERB_COMMIT), req, CommitReply, timeout=1800)
    print(r.digest)
    return 0


def _copy(src, out) -> int:
    """`src` to `out` until its end, CHUNK by CHUNK; the bytes."""
    from shared.tarcopy import CHUNK
    n = 0
    while data := src.read(CHUNK):
        out.write(data)
        n += len(data)
    out.flush()
    return n


def _human(n: int) -> str:
    from services.cli.commands.verbs import human_size
    return human_size(n)
