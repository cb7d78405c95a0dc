"""The UI's HTML: one layout (templates/layout.html) around bodies built here, every value escaped."""

from __future__ import annotations

import datetime
import json
import string
from html import escape
from importlib import resources
from urllib.parse import urlencode

from aiohttp import web

from shared.messages.agent import Heartbeat
from shared.oci.manifest import ImageConfig, Index, Manifest
from shared.registry_meta import ManifestLink, Referrer

from .dive import Analysis

_LAYOUT = string.Template(resources.files(__package__).joinpath("templates/layout.html").read_text())
FILES_SHOWN = 200  # per layer and list: a page stays small whatever the layer holds


def h(value: object) -> str:
    return escape(str(value), quote=True)


def url(path: str, **query: object) -> str:
    q = {k: v for k, v in query.items() if v not in (None, "")}
    return h(f"/ui/{path}" + (f"?{urlencode(q)}" if q else ""))


def size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def when(ts: float) -> str:
    if not ts:
        return "—"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def hidden_csrf(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{h(csrf)}">'


def page(title: str, body: str, *, user: str, admin: bool, csrf: str, flash: str = "",
         error: bool = False, status: int = 200) -> web.Response:
    nav = [f'<a href="{url("")}">Repositories</a>']
    if admin:
        nav.append(f'<a href="{url("fleet")}">Fleet</a>')
        nav.append(f'<a href="{url("users")}">Users</a><a href="{url("gc")}">GC</a>')
    if user:
        who = (f'{h(user)} <form class="inline" method="post" action="{url("logout")}">{hidden_csrf(csrf)}'
               f'<button type="submit">Log out</button></form>')
    else:
        who = f'<a href="{url("login")}">Log in</a>'
    html = _LAYOUT.substitute(
        title=h(title), nav="".join(nav), who=who, body=body,
        flash=f'<div class="flash{" error" if error else ""}">{h(flash)}</div>' if flash else "")
    return web.Response(text=html, content_type="text/html", status=status, headers={
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'"})


def badge(public: bool) -> str:
    return '<span class="badge public">public</span>' if public else '<span class="badge private">private</span>'


def login_body(csrf: str, next_url: str) -> str:
    return (f'<h1>Log in</h1><form class="login" method="post" action="{url("login")}">{hidden_csrf(csrf)}'
            f'<input type="hidden" name="next" value="{h(next_url)}">'
            '<label for="username">User</label><input type="text" id="username" name="username" '
            'autocomplete="username" required>'
            '<label for="password">Password</label><input type="password" id="password" name="password" '
            'autocomplete="current-password" required>'
            '<button type="submit">Log in</button></form>')


def repositories_body(rows: list[tuple[str, bool, int, float]], *, q: str, page_no: int, pages: int,
                      total: int) -> str:
    out = [f'<h1>Repositories <span class="muted">({total})</span></h1>',
           f'<form method="get" action="{url("")}"><input type="search" name="q" value="{h(q)}" '
           'placeholder="search repositories" data-filter="tr[data-name]" aria-label="search"> '
           '<button type="submit">Search</button></form><p></p>',
           '<table id="repos"><tr><th>Repository</th><th>Visibility</th><th class="num">Size</th>'
           '<th>Last push</th></tr>']
    for name, public, nbytes, last in rows:
        out.append(f'<tr data-name="{h(name.lower())}"><td><a href="{url("repo", name=name)}">{h(name)}</a></td>'
                   f'<td>{badge(public)}</td><td class="num">{size(nbytes)}</td><td>{when(last)}</td></tr>')
    if not rows:
        out.append('<tr><td colspan="4" class="muted">no repositories to show</td></tr>')
    out.append("</table>")
    nav = []
    if page_no > 1:
        nav.append(f'<a href="{url("", q=q, page=page_no - 1)}">← previous</a>')
    nav.append(f'<span class="muted">page {page_no} of {max(pages, 1)}</span>')
    if page_no < pages:
        nav.append(f'<a href="{url("", q=q, page=page_no + 1)}">next →</a>')
    out.append(f'<div class="pager">{"".join(nav)}</div>')
    return "".join(out)


def _platforms(index: Index | None) -> str:
    if index is None:
        return '<span class="muted">—</span>'
    return ", ".join(h(f"{d.platform.os}/{d.platform.architecture}"
                       + (f"/{d.platform.variant}" if d.platform.variant else ""))
                     for d in index.manifests if d.platform is not None)


def repository_body(repo: str, public: bool, tags: list[tuple[str, ManifestLink, Index | None]], *,
                    admin: bool, csrf: str) -> str:
    out = [f'<h1>{h(repo)} {badge(public)}</h1>']
    if admin:
        out.append(f'<form class="inline" method="post" action="{url("visibility")}">{hidden_csrf(csrf)}'
                   f'<input type="hidden" name="repo" value="{h(repo)}">'
                   f'<input type="hidden" name="public" value="{"0" if public else "1"}">'
                   f'<button type="submit" id="toggle-visibility">Make {"private" if public else "public"}'
                   '</button></form>')
    out.append('<h2>Tags</h2><table id="tags"><tr><th>Tag</th><th>Digest</th><th class="num">Size</th>'
               '<th>Platforms</th><th>Pushed</th><th>By</th>' + ("<th></th>" if admin else "") + "</tr>")
    for tag, link, index in tags:
        out.append(f'<tr><td><a href="{url("image", repo=repo, ref=tag)}">{h(tag)}</a></td>'
                   f'<td class="mono" title="{h(link.digest)}">{h(link.digest.short)}</td>'
                   f'<td class="num">{size(link.total_size)}</td><td>{_platforms(index)}</td>'
                   f'<td>{when(link.pushed_at)}</td><td class="by">{h(link.pushed_by or "—")}</td>')
        if admin:
            out.append(f'<td><form class="inline" method="post" action="{url("untag")}" '
                       f'data-confirm="Delete tag {h(tag)}?">{hidden_csrf(csrf)}'
                       f'<input type="hidden" name="repo" value="{h(repo)}"><input type="hidden" name="tag" '
                       f'value="{h(tag)}"><button class="danger" type="submit">Delete</button></form></td>')
        out.append("</tr>")
    if not tags:
        out.append(f'<tr><td colspan="{7 if admin else 6}" class="muted">no tags</td></tr>')
    out.append("</table>")
    return "".join(out)


def _kv(pairs: list[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{h(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _cmd(value: list[str] | None) -> str:
    return f"<code>{h(json.dumps(value))}</code>" if value else '<span class="muted">—</span>'


def index_body(repo: str, ref: str, link: ManifestLink, index: Index) -> str:
    rows = "".join(
        f'<tr><td><a href="{url("image", repo=repo, ref=str(d.digest))}" class="mono">{h(d.digest)}</a></td>'
        f'<td>{h(f"{d.platform.os}/{d.platform.architecture}") if d.platform else "—"}</td>'
        f'<td class="num">{size(d.size)}</td><td>{h(d.media_type)}</td></tr>' for d in index.manifests)
    return (f'<h1>{h(repo)}:{h(ref)}</h1>'
            + _kv([("Digest", f'<code>{h(link.digest)}</code>'), ("Media type", h(link.media_type)),
                   ("Pushed", when(link.pushed_at))])
            + '<h2>Manifests</h2><table><tr><th>Digest</th><th>Platform</th><th class="num">Size</th>'
            f'<th>Media type</th></tr>{rows}</table>')


def _files(title: str, items: list[tuple[str, int]] | list[str]) -> str:
    if not items:
        return ""
    lines = []
    for it in items[:FILES_SHOWN]:
        lines.append(f"<li><code>/{h(it[0])}</code> {size(it[1])}</li>" if isinstance(it, tuple)
                     else f"<li><code>/{h(it)}</code></li>")
    more = f'<li class="muted">… {len(items) - FILES_SHOWN} more</li>' if len(items) > FILES_SHOWN else ""
    return f'<details><summary>{h(title)} ({len(items)})</summary><ul class="files">{"".join(lines)}{more}</ul></details>'


def image_body(repo: str, ref: str, link: ManifestLink, manifest: Manifest, config: ImageConfig,
               analysis: Analysis | None, referrers: list[Referrer]) -> str:
    c = config.config
    ports = ", ".join(sorted(c.exposed_ports or {}))
    labels = "".join(f"<div><code>{h(k)}={h(v)}</code></div>" for k, v in sorted((c.labels or {}).items()))
    env = "".join(f"<div><code>{h(e)}</code></div>" for e in c.env or [])
    out = [f'<h1>{h(repo)}:{h(ref)}</h1>', _kv([
        ("Digest", f"<code>{h(link.digest)}</code>"), ("Platform", h(f"{config.os}/{config.architecture}")),
        ("Created", h(config.created or "—")), ("Pushed", when(link.pushed_at)),
        ("Size", f"{size(sum(d.size for d in manifest.layers))} compressed"),
        ("Entrypoint", _cmd(c.entrypoint)), ("Cmd", _cmd(c.cmd)), ("User", h(c.user or "—")),
        ("Working dir", h(c.working_dir or "—")), ("Exposed ports", h(ports or "—")),
        ("Env", env or "—"), ("Labels", labels or "—")])]
    # history entries without empty_layer are the layers, in order
    made_by = [hist.created_by or "" for hist in config.history if not hist.empty_layer]
    out.append('<h2>Layers</h2><table id="layers"><tr><th>#</th><th>Instruction</th><th class="num">Compressed</th>'
               '<th class="num">Uncompressed</th><th class="num">Wasted</th><th>Files</th></tr>')
    for i, d in enumerate(manifest.layers):
        ch = analysis.layers[i] if analysis else None
        unpacked = size(sum(s for _, s in ch.added) + sum(s for _, s in ch.changed)) if ch else "—"
        files = (_files("added", ch.added) + _files("changed", ch.changed) + _files("removed", ch.removed)
                 if ch else '<span class="muted">not read</span>')
        out.append(f'<tr><td>{i + 1}</td><td><code>{h(made_by[i] if i < len(made_by) else "")}</code>'
                   f'<div class="muted mono">{h(d.digest)}</div></td><td class="num">{size(d.size)}</td>'
                   f'<td class="num">{unpacked}</td><td class="num">{size(ch.wasted) if ch else "—"}</td>'
                   f'<td>{files}</td></tr>')
    out.append("</table>")
    if analysis is not None:
        out.append(f'<h2>Wasted space: <span id="wasted-total">{size(analysis.wasted)}</span></h2>')
        if analysis.culprits:
            top = analysis.culprits[0][1] or 1
            out.append('<table id="culprits"><tr><th>File</th><th class="num">Wasted</th><th class="num">Copies</th>'
                       '<th></th></tr>')
            for path, wasted, copies in analysis.culprits[:FILES_SHOWN]:
                out.append(f'<tr><td><code>/{h(path)}</code></td><td class="num">{size(wasted)}</td>'
                           f'<td class="num">{copies}</td><td><meter min="0" max="{top}" value="{wasted}"></meter></td></tr>')
            out.append("</table>")
        else:
            out.append('<p class="muted">No file is removed or overwritten by a later layer.</p>')
    if referrers:
        out.append('<h2>Referrers</h2><table id="referrers"><tr><th>Digest</th><th>Artifact type</th>'
                   '<th class="num">Size</th></tr>')
        for r in referrers:
            out.append(f'<tr><td><a class="mono" href="{url("image", repo=repo, ref=str(r.digest))}">{h(r.digest)}'
                       f'</a></td><td>{h(r.artifact_type or r.media_type)}</td><td class="num">{size(r.size)}</td></tr>')
        out.append("</table>")
    return "".join(out)


def artifact_body(repo: str, ref: str, link: ManifestLink, manifest: Manifest) -> str:
    """A manifest whose config is no image config (a signature, an SBOM)."""
    rows = "".join(f'<tr><td class="mono">{h(d.digest)}</td><td>{h(d.media_type)}</td><td class="num">'
                   f'{size(d.size)}</td></tr>' for d in manifest.layers)
    return (f"<h1>{h(repo)}@{h(ref)}</h1>"
            + _kv([("Digest", f"<code>{h(link.digest)}</code>"),
                   ("Artifact type", h(link.artifact_type or manifest.config.media_type)),
                   ("Subject", f"<code>{h(link.subject or '—')}</code>"), ("Pushed", when(link.pushed_at))])
            + f"<h2>Blobs</h2><table><tr><th>Digest</th><th>Media type</th><th class=\"num\">Size</th></tr>{rows}</table>")


def fleet_body(agents: list[Heartbeat]) -> str:
    out = ['<h1>Fleet</h1><table id="agents"><tr><th>Agent</th><th>Address</th><th>Runtime</th>'
           '<th class="num">CPUs</th><th class="num">Memory free</th><th class="num">Memory total</th>'
           '<th class="num">Containers</th><th class="num">Running</th><th>Last seen</th></tr>']
    for a in agents:
        out.append(f"<tr><td>{h(a.agent_id)}</td><td>{h(a.address)}</td><td>{h(a.runtime)}</td>"
                   f'<td class="num">{a.cpus}</td><td class="num">{size(a.memory_free)}</td>'
                   f'<td class="num">{size(a.memory_total)}</td><td class="num">{a.containers}</td>'
                   f'<td class="num">{a.running}</td><td>{when(a.time)}</td></tr>')
    if not agents:
        out.append('<tr><td colspan="9" class="muted">no runtime-agent is running</td></tr>')
    out.append("</table>")
    return "".join(out)
