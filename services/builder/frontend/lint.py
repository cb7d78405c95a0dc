"""Build checks: the BuildKit linter rules that apply here, with its names, messages and URLs.

Parse-time rules look at an instruction as written (casing, MAINTAINER);
dispatch-time rules at what it means (variables, secrets in ARG/ENV, shell
forms, sources a `.dockerignore` excludes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.buildcontext import PatternMatcher


@dataclass(frozen=True)
class Rule:
    name: str
    slug: str  # of the rule's page
    description: str

    @property
    def url(self) -> str:
        return f"https://docs.docker.com/go/dockerfile/rule/{self.slug}/"


STAGE_NAME_CASING = Rule("StageNameCasing", "stage-name-casing", "Stage names should be lowercase")
FROM_AS_CASING = Rule("FromAsCasing", "from-as-casing",
                      "The 'as' keyword should match the case of the 'from' keyword")
JSON_ARGS_RECOMMENDED = Rule("JSONArgsRecommended", "json-args-recommended",
                             "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior "
                             "related to OS signals")
MAINTAINER_DEPRECATED = Rule("MaintainerDeprecated", "maintainer-deprecated",
                             "The MAINTAINER instruction is deprecated, use a label instead to define an image author")
UNDEFINED_VAR = Rule("UndefinedVar", "undefined-var", "Variables should be defined before their use")
SECRETS_USED_IN_ARG_OR_ENV = Rule("SecretsUsedInArgOrEnv", "secrets-used-in-arg-or-env",
                                  "Sensitive data should not be used in the ARG or ENV commands")
COPY_IGNORED_FILE = Rule("CopyIgnoredFile", "copy-ignored-file",
                         "Attempting to Copy file that is excluded by .dockerignore")

_SECRET_RE = re.compile(r"(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|secret|token)"
                        r"(?:_|$)", re.I)
_SECRET_ALLOW_RE = re.compile(r"(?:_|^)(?:public|file|version)(?:_|$)", re.I)


@dataclass(frozen=True)
class Lint:
    rule: Rule
    message: str
    file: str
    line: int


def parse_checks(cmd: str, args: tuple[str, ...], file: str, line: int) -> list[Lint]:
    """The rules BuildKit runs while parsing one instruction (`cmd` as written)."""
    out = []
    low = cmd.lower()
    if low == "maintainer":
        out.append(Lint(MAINTAINER_DEPRECATED, "Maintainer instruction is deprecated in favor of using label",
                        file, line))
    if low == "from" and len(args) == 3:
        if args[2] != args[2].lower():
            out.append(Lint(STAGE_NAME_CASING, f"Stage name '{args[2]}' should be lowercase", file, line))
        # A command of mixed case is another rule's business; only all-lower or all-upper is compared.
        if (cmd == low and args[1] != args[1].lower()) or (cmd == cmd.upper() and args[1] != args[1].upper()):
            out.append(Lint(FROM_AS_CASING, f"'{args[1]}' and '{cmd}' keywords' casing do not match", file, line))
    return out


def secret_key(instruction: str, key: str, file: str, line: int) -> Lint | None:
    if _SECRET_RE.search(key) and not _SECRET_ALLOW_RE.search(key):
        return Lint(SECRETS_USED_IN_ARG_OR_ENV,
                    f'Do not use ARG or ENV instructions for sensitive data ({instruction} "{key}")', file, line)
    return None


def json_args(instruction: str, file: str, line: int) -> Lint:
    return Lint(JSON_ARGS_RECOMMENDED, f"JSON arguments recommended for {instruction} to prevent unintended "
                "behavior related to OS signals", file, line)


def undefined_var(name: str, defined: list[str], file: str, line: int) -> Lint:
    msg = f"Usage of undefined variable '${name}'"
    match = suggest(name, defined)
    if match:
        msg += f" (did you mean ${match}?)"
    return Lint(UNDEFINED_VAR, msg, file, line)


def copy_ignored(cmd: str, src: str, ignore: PatternMatcher | None, file: str, line: int) -> Lint | None:
    """A COPY/ADD source the `.dockerignore` excludes (not checked when it has `!` exceptions, like BuildKit)."""
    if ignore is None or not ignore.patterns or ignore.has_exclusions:
        return None
    clean = re.sub(r"/+", "/", src.strip())
    clean = clean.strip("/") if clean not in ("/", ".") else clean
    if clean in (".", "/", ""):
        # The context root itself only counts when the patterns exclude every entry of it.
        if not any(not p.exclusion and p.text in ("*", "**", "**/*") for p in ignore.patterns):
            return None
        clean = "."
    parts = clean.split("/")
    if not any(ignore.matches("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
        return None
    return Lint(COPY_IGNORED_FILE, f'Attempting to {cmd.capitalize()} file "{clean}" that is excluded by '
                ".dockerignore", file, line)


def suggest(name: str, options: list[str]) -> str:
    """The option closest to `name` by edit distance under 3 (BuildKit's suggest.Search)."""
    best, dist = "", 3
    for opt in options:
        if opt == name:
            return ""
        d = _levenshtein(name, opt)
        if d < dist:
            best, dist = opt, d
    return best


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
