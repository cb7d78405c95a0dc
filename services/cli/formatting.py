"""`--format` as docker reads it: Go-template field names, a `table` prefix, or `json`.

Supported: `{{.Field}}`, `{{json .Field}}`, `{{json .}}`, `{{.Label "key"}}`, `{{lower .F}}`,
`{{upper .F}}`, and `\\t`/`\\n` written literally on a shell line. `table` prints a header
row (docker's column names) and aligns tab-separated columns. `json` prints one object
per line. Anything else in `{{ }}` is refused with the part that was not understood.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from shared.errors import InvalidArgument

_ACTION = re.compile(r"\{\{(.*?)\}\}")
_FIELD = re.compile(r'^(?:(json|lower|upper)\s+)?\.(\w*)(?:\s+"([^"]*)")?$')


def _eval(action: str, row: Mapping, labels: Mapping[str, str]) -> str:
    m = _FIELD.match(action.strip())
    if not m:
        raise InvalidArgument(f"template: unsupported action {{{{{action}}}}}: use {{{{.Field}}}} or {{{{json .}}}}")
    fn, name, arg = m.groups()
    if name == "Label":
        value: object = labels.get(arg or "", "")
    elif name == "":
        value = dict(row)
    elif name in row:
        value = row[name]
    else:
        raise InvalidArgument(f"template: can't evaluate field {name}: one of {', '.join(row)}")
    if fn == "json":
        import json
        return json.dumps(value)
    text = str(value)
    return text.lower() if fn == "lower" else text.upper() if fn == "upper" else text


def _render_one(template: str, row: Mapping, labels: Mapping[str, str]) -> str:
    return _ACTION.sub(lambda m: _eval(m.group(1), row, labels), template)


def _unescape(text: str) -> str:
    return text.replace("\\t", "\t").replace("\\n", "\n")


def render(fmt: str, rows: Sequence[Mapping], headers: Mapping[str, str],
           labels: Sequence[Mapping[str, str]] | None = None) -> list[str]:
    """Output lines for `rows` (dicts of docker field name -> value); `headers` names the columns."""
    labels = labels or [{} for _ in rows]
    if fmt.strip() == "json":
        import json
        return [json.dumps(dict(r)) for r in rows]
    table = fmt.startswith("table")
    body = _unescape(fmt[len("table"):].strip() if table else fmt)
    if table and not body:
        body = "\t".join(f"{{{{.{k}}}}}" for k in headers)
    lines = [_render_one(body, r, lb) for r, lb in zip(rows, labels)]
    if not table:
        return lines
    head = _ACTION.sub(lambda m: _header(m.group(1), headers), body)
    return align([head, *lines])


def _header(action: str, headers: Mapping[str, str]) -> str:
    m = _FIELD.match(action.strip())
    if not m:
        return action.strip().upper()
    name = m.group(2)
    return headers.get(name, name.upper()) if name != "Label" else (m.group(3) or "").upper()


def align(lines: list[str]) -> list[str]:
    """Tab-separated columns padded like docker's tabwriter (three spaces between)."""
    cells = [ln.split("\t") for ln in lines]
    n = max(len(c) for c in cells)
    widths = [max((len(c[i]) for c in cells if i < len(c) - 1), default=0) for i in range(n)]
    return ["   ".join(v.ljust(widths[i]) if i < len(c) - 1 else v for i, v in enumerate(c)).rstrip()
            for c in cells]


def emit(fmt: str, rows: Sequence[Mapping], headers: Mapping[str, str],
         labels: Sequence[Mapping[str, str]] | None = None) -> None:
    import sys
    for line in render(fmt, rows, headers, labels):
        sys.stdout.write(line + "\n")
