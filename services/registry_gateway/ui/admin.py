"""The UI's admin pages: users and their grants (list, add, grant) and the GC's runs.

Users and grants go through the same AuthStore the bus verbs (`dockyard user add`, `grant`)
use; the GC page asks the garbage-collector on the bus, as `dockyard gc status` does. Every
page and form is the admin's only; every form carries the session's CSRF token.
"""

from __future__ import annotations

from aiohttp import web

from shared import subjects
from shared.bus import BusClient
from shared.errors import DockyardError, InvalidArgument
from shared.messages.common import Empty
from shared.messages.gc import StatusReply
from shared.permissions import ROLES

from .pages import h, hidden_csrf, size, url, when
from .routes import _form, _render, _require_admin, _see_other, handler

GRANT_ACCESS = ("pull", "push", "none")
GC_TIMEOUT = 5.0


@handler
async def users(request, ui, session, principal):
    _require_admin(principal)
    store = ui.auth.store
    rows = []
    for rec in await store.list_users():
        rows.append((rec, await store.grants_of(rec.username)))
    body = users_body(rows, ui.sessions.csrf(session))
    return _render(request, ui, session, principal, "Users", body)


@handler
async def add_user(request, ui, session, principal):
    form = await _form(request, ui, session)
    _require_admin(principal)
    role = form.get("role", "")
    if role and role not in ROLES:
        raise InvalidArgument(f"role must be one of {', '.join(ROLES)} or none, not {role!r}")
    await ui.auth.store.add_user(form.get("username", ""), form.get("password", ""), role=role)
    return _see_other("/ui/users")


@handler
async def grant(request, ui, session, principal):
    form = await _form(request, ui, session)
    _require_admin(principal)
    access = form.get("access", "")
    if access not in GRANT_ACCESS:
        raise InvalidArgument(f"access must be pull, push or none, not {access!r}")
    await ui.auth.store.grant(form.get("username", ""), form.get("pattern", ""), access)
    return _see_other("/ui/users")


@handler
async def gc_runs(request, ui, session, principal):
    _require_admin(principal)
    try:
        status = await BusClient(ui.nc).request(subjects.GC_STATUS, Empty(), StatusReply, timeout=GC_TIMEOUT)
    except DockyardError as e:  # the page still says why: no collector runs, or it refused us
        return _render(request, ui, session, principal, "Garbage collection", gc_body(None),
                       flash=f"the garbage-collector did not answer: {e.message}", error=True)
    return _render(request, ui, session, principal, "Garbage collection", gc_body(status))


# ---- HTML -------------------------------------------------------------------------------

def _roles(selected: str = "") -> str:
    opts = [("", "none")] + [(r, r) for r in ROLES]
    return "".join(f'<option value="{h(v)}"{" selected" if v == selected else ""}>{h(t)}</option>' for v, t in opts)


def users_body(rows: list, csrf: str) -> str:
    out = ['<h1>Users</h1><table id="users"><tr><th>User</th><th>Bus role</th><th>Created</th>'
           '<th>Grants</th></tr>']
    for rec, grants in rows:
        listed = ", ".join(f"{h(g.access)} {h(g.pattern)}" for g in sorted(grants, key=lambda g: g.pattern))
        out.append(f'<tr data-user="{h(rec.username)}"><td>{h(rec.username)}</td><td>{h(rec.role or "—")}</td>'
                   f'<td>{when(rec.created_at)}</td><td class="grants">{listed or "—"}</td></tr>')
    out.append("</table>")
    out.append(f'<h2>Add a user</h2><form id="add-user" method="post" action="{url("users/add")}">'
               f'{hidden_csrf(csrf)}<label for="new-username">User</label>'
               '<input type="text" id="new-username" name="username" autocomplete="off" required>'
               '<label for="new-password">Password</label>'
               '<input type="password" id="new-password" name="password" autocomplete="new-password" required>'
               f'<label for="new-role">Bus role</label><select id="new-role" name="role">{_roles()}</select>'
               '<button type="submit">Add</button></form>')
    access = "".join(f'<option value="{a}">{a}</option>' for a in GRANT_ACCESS)
    out.append(f'<h2>Grant</h2><form id="grant" method="post" action="{url("grant")}">{hidden_csrf(csrf)}'
               '<label for="grant-username">User</label>'
               '<input type="text" id="grant-username" name="username" required>'
               '<label for="grant-pattern">Repositories</label>'
               '<input type="text" id="grant-pattern" name="pattern" placeholder="team/*" required>'
               f'<label for="grant-access">Access</label><select id="grant-access" name="access">{access}</select>'
               '<button type="submit">Grant</button></form>')
    return "".join(out)


def gc_body(status: StatusReply | None) -> str:
    out = ['<h1>Garbage collection</h1><table id="gc-jobs"><tr><th>Job</th><th>Schedule</th><th>Next run</th>'
           '<th>Last run</th><th>Trigger</th><th class="num">Examined</th><th class="num">Removed</th>'
           '<th class="num">Freed</th><th class="num">Took</th><th>Result</th></tr>']
    for j in status.jobs if status else []:
        r = j.last
        if r is None:
            out.append(f'<tr data-job="{h(j.job)}"><td>{h(j.job)}</td><td>{h(j.schedule or "—")}</td>'
                       f'<td>{when(j.next_run)}</td><td colspan="7" class="muted">never ran</td></tr>')
            continue
        result = f'<span class="error">{h(r.error)}</span>' if r.error else "ok"
        out.append(f'<tr data-job="{h(j.job)}"><td>{h(j.job)}</td><td>{h(j.schedule or "—")}</td>'
                   f'<td>{when(j.next_run)}</td><td>{when(r.started_at)}</td><td>{h(r.trigger)}</td>'
                   f'<td class="num">{r.examined}</td><td class="num">{r.removed}</td>'
                   f'<td class="num freed">{size(r.freed)}</td><td class="num">{r.duration:.2f} s</td>'
                   f"<td>{result}{' (running on ' + h(j.running_on) + ')' if j.running_on else ''}</td></tr>")
    out.append("</table>")
    return "".join(out)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/users", users)
    app.router.add_post("/ui/users/add", add_user)
    app.router.add_post("/ui/grant", grant)
    app.router.add_get("/ui/gc", gc_runs)

