"""`dockyard events`: the fleet's container events with docker's names, filters and formats.

Live events come from the bus (`dockyard.events.container.<agent>.<action>`); with
`--since`, each agent is first asked for those it kept (fleet-wide `events`). The live
subscription starts before that question, so nothing falls between the two; an event
heard both ways is printed once. With `--until` in the past, only kept events are shown.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

_DURATION = r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)"
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
FILTER_KEYS = ("type", "event", "container", "image", "label", "host")


def register(sub: Any) -> None:
    p = sub.add_parser("events", help="the fleet's container events, live (and kept ones with --since)")
    p.add_argument("--since", help="a unix time, an RFC 3339 date, or a duration ago (10m)")
    p.add_argument("--until", help="a unix time, an RFC 3339 date, or a duration ago; stop then")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="type=container, event=die, container=NAME|ID, image=REF, label=K[=V], host=AGENT")
    p.add_argument("--format", help="a Go template ({{.Action}} {{.Actor.ID}}) or json")
    p.set_defaults(func=events)


def parse_time(text: str, now: float | None = None) -> float:
    """docker's --since/--until: unix seconds (fractions allowed), RFC 3339, or a Go duration ago."""
    from shared.errors import InvalidArgument
    now = time.time() if now is None else now
    t = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    if t and re.fullmatch(f"(?:{_DURATION})+", t):
        return now - sum(float(n) * _UNIT[u] for n, u in re.findall(_DURATION, t))
    from shared.messages.agent import unix_time
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        t += "T00:00:00Z"
    v = unix_time(t if re.search(r"(Z|[+-]\d{2}:\d{2})$", t) else t + "Z")
    if v is None:
        raise InvalidArgument(f"invalid time {text!r}: a unix time, an RFC 3339 date or a duration such as 10m")
    return v


def parse_filters(items: list[str]) -> dict[str, list[str]]:
    from shared.errors import InvalidArgument
    out: dict[str, list[str]] = {}
    for f in items:
        k, eq, val = f.partition("=")
        if not eq or k not in FILTER_KEYS:
            raise InvalidArgument(f"invalid filter {f!r}: one of {', '.join(FILTER_KEYS)} as KEY=VALUE")
        out.setdefault(k, []).append(val)
    return out


def matches(ev, filters: dict[str, list[str]]) -> bool:
    """docker's rule: values of one key are alternatives, different keys must all match."""
    def any_of(key: str, ok) -> bool:
        return key not in filters or any(ok(v) for v in filters[key])
    return (any_of("type", lambda v: v == ev.type)
            and any_of("event", lambda v: v == ev.action)
            and any_of("container", lambda v: v in (ev.name, ev.id) or (len(v) >= 1 and ev.id.startswith(v)))
            and any_of("image", lambda v: v == ev.image or ev.image.startswith(v + ":"))
            and any_of("host", lambda v: v == ev.host)
            and any_of("label", lambda v: _label_ok(ev.attributes, v)))


def _label_ok(attrs: dict[str, str], spec: str) -> bool:
    k, eq, v = spec.partition("=")
    return k in attrs and (not eq or attrs[k] == v)


def docker_json(ev) -> dict:
    """The event as docker's API and `--format '{{json .}}'` give it."""
    return {"status": ev.action, "id": ev.id, "from": ev.image, "Type": ev.type, "Action": ev.action,
            "Actor": {"ID": ev.id, "Attributes": dict(ev.attributes)}, "scope": "local",
            "time": ev.time_nano // 1_000_000_000, "timeNano": ev.time_nano}


def text_line(ev) -> str:
    """docker's default line: `TIME container ACTION ID (k=v, ...)`, attributes sorted by key."""
    import datetime
    secs, nanos = divmod(ev.time_nano, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    attrs = ", ".join(f"{k}={v}" for k, v in sorted(ev.attributes.items()))
    return f"{stamp}.{nanos:09d}Z {ev.type} {ev.action} {ev.id} ({attrs})"


def render(ev, fmt: str | None) -> str:
    import json
    if not fmt:
        return text_line(ev)
    if fmt.strip() in ("json", "{{json .}}"):
        return json.dumps(docker_json(ev))
    from services.cli.formatting import render as render_rows
    row = docker_json(ev)
    flat = {"Status": row["status"], "ID": row["id"], "From": row["from"], "Type": row["Type"],
            "Action": row["Action"], "Scope": row["scope"], "Time": row["time"], "TimeNano": row["timeNano"],
            "Actor": row["Actor"]}
    fmt = fmt.replace(".Actor.ID", ".ActorID")
    flat["ActorID"] = ev.id
    return render_rows(fmt, [flat], {}, [ev.attributes])[0]


async def events(args, ctx) -> int:
    import asyncio

    from services.cli.commands.containers import fleet
    from shared import codec, subjects
    from shared.messages.agent import fleet as fleet_subject
    from shared.messages.verbs import VERB_EVENTS, ContainerEvent, EventsReply, EventsRequest
    filters = parse_filters(args.filter)
    now = time.time()
    since = parse_time(args.since, now) if args.since else 0.0
    until = parse_time(args.until, now) if args.until else 0.0
    client = await ctx.bus()
    seen: set[tuple[str, str, int]] = set()
    out = sys.stdout

    def show(ev) -> None:
        key = (ev.id, ev.action, ev.time_nano)
        if key in seen or not matches(ev, filters):
            return
        if since and ev.time_nano < since * 1e9:
            return
        seen.add(key)
        out.write(render(ev, args.format) + "\n")
        out.flush()

    live: asyncio.Queue = asyncio.Queue()
    dec = codec.decoder(ContainerEvent)
    sub = None
    if not until or until > now:
        async def on_msg(msg) -> None:
            try:
                live.put_nowait(dec.decode(msg.data))
            except Exception:  # noqa: BLE001 - a malformed event is skipped, not fatal
                pass
        sub = await client.nc.subscribe(f"{subjects.EVENT_CONTAINER}.>", cb=on_msg)
    try:
        if since:
            agents = await fleet(ctx)
            replies = await client.gather(fleet_subject(VERB_EVENTS), EventsRequest(since=since, until=until),
                                          EventsReply, timeout=2.0, expect=len(agents)) if agents else []
            for ev in sorted((e for r in replies for e in r.events), key=lambda e: e.time_nano):
                show(ev)
        if sub is None:
            return 0
        while True:
            timeout = None if not until else max(0.0, until - time.time())
            try:
                ev = await asyncio.wait_for(live.get(), timeout)
            except asyncio.TimeoutError:
                return 0
            if until and ev.time_nano > until * 1e9:
                return 0
            show(ev)
    finally:
        if sub is not None:
            await sub.unsubscribe()
