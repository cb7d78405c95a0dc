"""Dockerfile word expansion: a port of BuildKit's `frontend/dockerfile/shell` lexer.

Docker expands `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:+alt}`, `${VAR-d}`,
`${VAR+a}`, `${VAR:?msg}` and removes quotes in the words of ENV, ARG, LABEL,
COPY/ADD, WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL and FROM; RUN, CMD and
ENTRYPOINT are left to the shell in the container.
"""

from __future__ import annotations

from typing import Mapping

from shared.errors import InvalidArgument

_SPECIAL_PARAMS = set("@*#?-$!0")


class ShellError(ValueError):
    """A substitution the lexer cannot process; the caller adds file and line."""


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str):
        self.s, self.i, self.env, self.esc = text, 0, env, escape
        self.words: list[str] = []
        self._cur: list[str] = []
        self._in_word = False

    # -- scanner
    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def next(self) -> str:
        ch = self.peek()
        self.i += 1 if ch else 0
        return ch

    # -- word splitting (ProcessWords): raw chars never split, plain whitespace does
    def _add_char(self, ch: str) -> None:
        if ch.isspace() and ch not in "\u00a0":
            self._end_word()
        else:
            self._add_raw(ch)

    def _add_raw(self, ch: str) -> None:
        self._cur.append(ch)
        self._in_word = True

    def _end_word(self) -> None:
        if self._in_word:
            self.words.append("".join(self._cur))
            self._cur, self._in_word = [], False

    def process(self, stop: str = "") -> str:
        out: list[str] = []
        while self.peek():
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                return "".join(out)
            if ch == "'":
                tmp = self._single_quote()
                out.append(tmp)
                self._in_word = True
                for c in tmp:
                    self._add_raw(c)
            elif ch == '"':
                tmp = self._double_quote()
                out.append(tmp)
                self._in_word = True
                for c in tmp:
                    self._add_raw(c)
            elif ch == "$":
                tmp = self._dollar()
                out.append(tmp)
                for c in tmp:  # expanded values split on whitespace, like a shell
                    self._add_char(c)
            else:
                ch = self.next()
                if ch == self.esc:
                    ch = self.next()
                    if not ch:
                        break
                    self._add_raw(ch)
                else:
                    self._add_char(ch)
                out.append(ch)
        if stop:
            raise ShellError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out)

    def _single_quote(self) -> str:
        self.next()
        out = []
        while True:
            ch = self.next()
            if not ch:
                raise ShellError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                return "".join(out)
            out.append(ch)

    def _double_quote(self) -> str:
        self.next()
        out = []
        while True:
            ch = self.peek()
            if not ch:
                raise ShellError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                continue
            ch = self.next()
            if ch == self.esc:
                nxt = self.peek()
                if not nxt:
                    continue  # a trailing escape is dropped
                if nxt in ('"', "$", self.esc):
                    ch = self.next()
            out.append(ch)

    def _name(self) -> str:
        ch = self.peek()
        if ch.isdigit():
            start = self.i
            while self.peek().isdigit():
                self.next()
            return self.s[start:self.i]
        if ch and ch in _SPECIAL_PARAMS:
            return self.next()
        start = self.i
        while (c := self.peek()) and (c.isalnum() or c == "_"):
            self.next()
        return self.s[start:self.i]

    def _dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self._name()
            return self.env.get(name, "") if name else "$"
        self.next()
        if self.peek() == "":
            raise ShellError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise ShellError("syntax error: bad substitution")
        name = self._name()
        ch = self.next()
        if not ch:
            raise ShellError("syntax error: missing '}'")
        value = self.env.get(name)
        if ch == "}":
            return value or ""
        if ch == ":":
            modifier = self.next()
            word = _Lexer(self.s, self.env, self.esc)
            word.i = self.i
            text = word.process("}")
            self.i = word.i
            if modifier == "+":
                return text if value else ""
            if modifier == "-":
                return value if value else text
            if modifier == "?":
                if not value:
                    raise ShellError(f"{name}: {text or 'is not allowed to be unset'}")
                return value
            raise ShellError(f"unsupported modifier ({modifier}) in substitution")
        if ch in "+-?":
            word = _Lexer(self.s, self.env, self.esc)
            word.i = self.i
            text = word.process("}")
            self.i = word.i
            if ch == "+":
                return text if value is not None else ""
            if ch == "-":
                return value if value is not None else text
            if value is None:
                raise ShellError(f"{name}: {text or 'is not allowed to be unset'}")
            return value
        raise ShellError(f"unsupported modifier ({ch}) in substitution")


def expand_word(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """One word, quotes removed and variables substituted (BuildKit's ProcessWord)."""
    return _Lexer(text, env, escape).process()


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Whitespace-split words after expansion (BuildKit's ProcessWords)."""
    lx = _Lexer(text, env, escape)
    lx.process()
    lx._end_word()
    return lx.words


def expand_or_raise(text: str, env: Mapping[str, str], escape: str, where: str) -> str:
    try:
        return expand_word(text, env, escape)
    except ShellError as exc:
        raise InvalidArgument(f"{where}: {exc}") from exc
