"""`.dockerignore` rules: a port of moby's patternmatcher (see the package docstring)."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidArgument


DOCKERIGNORE = ".dockerignore"
_REGEX_SPECIAL = set(".+()|{}$")


def read_dockerignore(text: str) -> list[str]:
    """Patterns of a `.dockerignore` file, normalised as moby's `ignorefile.ReadAll`."""
    out: list[str] = []
    for n, raw in enumerate(text.splitlines()):
        if n == 0:
            raw = raw.lstrip("\ufeff")
        if raw.startswith("#"):
            continue
        pattern = raw.strip()
        if not pattern:
            continue
        invert = pattern[0] == "!"
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = _clean(pattern)
            if len(pattern) > 1 and pattern[0] == "/":
                pattern = pattern[1:]
        out.append("!" + pattern if invert else pattern)
    return out


def _clean(path: str) -> str:
    """Go's `filepath.Clean` (posixpath.normpath keeps a leading `//`)."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


@dataclass(frozen=True)
class Pattern:
    """One compiled pattern; `kind` mirrors moby's exact/prefix/suffix/regexp match types."""

    text: str
    exclusion: bool
    kind: str
    regex: re.Pattern[str] | None

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None


def _compile(text: str, exclusion: bool) -> Pattern:
    """moby's `Pattern.compile`: a glob to an anchored regexp, `**` spanning dirs."""
    out = ["^"]
    kind = "exact"
    i, n, step = 0, len(text), 0
    while i < n:
        ch = text[i]
        i += 1
        if ch == "*":
            if i < n and text[i] == "*":
                i += 1
                if i < n and text[i] == "/":  # `**/` is `**`
                    i += 1
                if i >= n:  # trailing `**` takes everything, as in .gitignore
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        out.append(".*")
                        kind = "regexp"
                else:
                    out.append("(.*/)?")
                    kind = "regexp"
                if step == 0:
                    kind = "suffix"
            else:
                out.append("[^/]*")
                kind = "regexp"
        elif ch == "?":
            out.append("[^/]")
            kind = "regexp"
        elif ch in _REGEX_SPECIAL:
            out.append("\\" + ch)
        elif ch == "\\":
            if i < n:
                out.append("\\" + text[i])
                i += 1
                kind = "regexp"
            else:
                out.append("\\\\")
        elif ch in "[]":
            out.append(ch)
            kind = "regexp"
        else:
            out.append(ch)
        step += 1
    if kind != "regexp":
        return Pattern(text, exclusion, kind, None)
    out.append("$")
    try:
        return Pattern(text, exclusion, kind, re.compile("".join(out), re.DOTALL))
    except re.error as exc:
        raise InvalidArgument(f".dockerignore: bad pattern {text!r}: {exc}") from exc


class PatternMatcher:
    """An ordered list of include/exclude patterns; the last match wins."""

    def __init__(self, patterns: list[str]):
        self.patterns: list[Pattern] = []
        for p in patterns:
            p = p.strip()
            if not p:
                continue
            p = _clean(p)
            exclusion = p[0] == "!"
            if exclusion:
                if len(p) == 1:
                    raise InvalidArgument('.dockerignore: illegal exclusion pattern: "!"')
                p = p[1:]
            self.patterns.append(_compile(p, exclusion))

    @property
    def has_exclusions(self) -> bool:
        return any(p.exclusion for p in self.patterns)

    def matches(self, path: str) -> bool:
        """True if `path` (slash-separated, relative) is excluded, by itself or by a parent."""
        matched = False
        parent = posixpath.dirname(path) or "."
        parent_dirs = parent.split("/")
        for pat in self.patterns:
            # An include pattern cannot change an already excluded path, nor an
            # exception a path not yet excluded: skip them (moby does the same).
            if pat.exclusion != matched:
                continue
            hit = pat.match(path)
            if not hit and parent != ".":
                for i in range(len(parent_dirs)):
                    if pat.match("/".join(parent_dirs[: i + 1])):
                        hit = True
                        break
            if hit:
                matched = not pat.exclusion
        return matched

    def may_reinclude_below(self, dir_path: str) -> bool:
        """Whether an exception could re-include something under an excluded dir.

        The CLI's walk only descends into an excluded directory when an
        exception pattern starts with that directory's path.
        """
        prefix = dir_path + "/"
        return any(p.exclusion and (p.text + "/").startswith(prefix) for p in self.patterns)


def context_excludes(ignore_text: str | None, dockerfile: str = "Dockerfile") -> list[str]:
    """The patterns for a context, with the Dockerfile and `.dockerignore` always kept."""
    excludes = read_dockerignore(ignore_text) if ignore_text else []
    if not excludes:
        return excludes
    pm = PatternMatcher(excludes)
    if pm.matches(DOCKERIGNORE):
        excludes.append("!" + DOCKERIGNORE)
    dockerfile = dockerfile.replace(os.sep, "/")
    if PatternMatcher(excludes).matches(dockerfile):
        excludes.append("!" + dockerfile)
    return excludes


def context_ignore(root: Path) -> PatternMatcher | None:
    """The patterns of an unpacked context's `.dockerignore`, or None without one."""
    try:
        text = (root / DOCKERIGNORE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return PatternMatcher(read_dockerignore(text))


def ignored_specials(root: Path, dockerfile: str) -> list[str]:
    """The Dockerfile and `.dockerignore` of an unpacked context when its patterns exclude them.

    The CLI always sends both (the builder reads them), but COPY and ADD must
    not see them then, as docker's builder drops them from the context.
    """
    pm = context_ignore(root)
    if pm is None or not pm.patterns:
        return []
    names = [DOCKERIGNORE] + ([dockerfile] if dockerfile and not dockerfile.startswith("..") else [])
    return [n for n in names if pm.matches(n)]
