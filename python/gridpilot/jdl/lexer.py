"""JDL text to tokens, each with the line and column (from 1) where it starts. Errors are JdlError."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, List, Optional

from gridpilot.errors import JdlError

# Token kinds. Punctuation and operators use their own text as kind.
IDENT = "identifier"
STRING = "string"
NUMBER = "number"
EOF = "end of file"

_PUNCT2 = ("==", "!=", "<=", ">=", "&&", "||")
_PUNCT1 = "[]{}();,.=<>!"

_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT_CHARS = _IDENT_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")

_PLAIN_RUN = re.compile(r'[^"\\\n]+')
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "'": "'"}

# A number this long is a mistake, and int() of a very long digit string is slow or refused (Python 3.11+).
MAX_NUMBER_LENGTH = 64


@dataclass(frozen=True)
class Token:
    kind: str
    text: str  # the source text; for strings, the decoded value
    line: int
    column: int
    offset: int  # index of the first character in the source
    end: int  # index just past the last character

    def describe(self) -> str:
        """How an error message names this token: 'end of file', 'string "abc"', "'='"."""
        if self.kind == EOF:
            return "end of file"
        if self.kind == STRING:
            shown = self.text if len(self.text) <= 30 else self.text[:27] + "..."
            return f"string {shown!r}"
        if self.kind in (IDENT, NUMBER):
            return f"{self.kind} {self.text!r}"
        return repr(self.text)


def _describe_char(c: str) -> str:
    if c.isprintable() and not c.isspace():
        return repr(c)
    return f"character U+{ord(c):04X}"


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.line_start = 0  # offset of the first character of the current line

    @property
    def column(self) -> int:
        return self.pos - self.line_start + 1

    def error(self, message: str, line: Optional[int] = None, column: Optional[int] = None) -> JdlError:
        return JdlError(message, self.line if line is None else line, self.column if column is None else column)

    def newline(self) -> None:
        self.pos += 1
        self.line += 1
        self.line_start = self.pos

    def skip_space_and_comments(self) -> None:
        text = self.text
        n = len(text)
        while self.pos < n:
            c = text[self.pos]
            if c == "\n":
                self.newline()
            elif c in " \t\r\f\v":
                self.pos += 1
            elif c == "#" or text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end
            else:
                return

    def tokens(self) -> Iterator[Token]:
        text = self.text
        n = len(text)
        if text.startswith("\ufeff"):  # a byte-order mark some editors write
            self.pos = 1
            self.line_start = 1
        while True:
            self.skip_space_and_comments()
            if self.pos >= n:
                yield Token(EOF, "", self.line, self.column, self.pos, self.pos)
                return
            c = text[self.pos]
            start, line, col = self.pos, self.line, self.column
            if c == '"':
                yield self.string()
            elif c in _DIGITS or (c in "+-" and self.pos + 1 < n and text[self.pos + 1] in _DIGITS):
                yield self.number()
            elif c in _IDENT_START:
                end = self.pos + 1
                while end < n and text[end] in _IDENT_CHARS:
                    end += 1
                self.pos = end
                yield Token(IDENT, text[start:end], line, col, start, end)
            elif text.startswith(_PUNCT2, self.pos):
                self.pos += 2
                yield Token(text[start : start + 2], text[start : start + 2], line, col, start, start + 2)
            elif c in _PUNCT1:
                self.pos += 1
                yield Token(c, c, line, col, start, start + 1)
            elif c in "&|":
                raise self.error(f"unexpected {c!r}; expected {c + c!r}")
            elif c == "'":
                raise self.error("unexpected \"'\"; strings are written in double quotes")
            else:
                raise self.error(f"unexpected {_describe_char(c)}")

    def string(self) -> Token:
        text = self.text
        n = len(text)
        start, line, col = self.pos, self.line, self.column
        out: List[str] = []
        i = self.pos + 1
        while True:
            # Copy plain runs in one slice: JDL strings (paths, package lists) are mostly plain.
            m = _PLAIN_RUN.match(text, i)
            j = m.end() if m else i
            out.append(text[i:j])
            i = j
            if i >= n or text[i] == "\n":
                self.pos = i
                raise self.error(f"unclosed string starting at line {line}, column {col}", line, col)
            if text[i] == '"':
                self.pos = i + 1
                return Token(STRING, "".join(out), line, col, start, i + 1)
            # A backslash.
            if i + 1 >= n or text[i + 1] == "\n":
                self.pos = i
                raise self.error(f"unclosed string starting at line {line}, column {col}", line, col)
            esc = text[i + 1]
            # An unknown escape keeps its backslash: a regular expression or a Windows-style path in an
            # Arguments string then means what the user typed.
            out.append(_ESCAPES.get(esc, "\\" + esc))
            i += 2

    def number(self) -> Token:
        text = self.text
        n = len(text)
        start, line, col = self.pos, self.line, self.column
        i = start + 1 if text[start] in "+-" else start

        def digits(k: int) -> int:
            while k < n and text[k] in _DIGITS:
                k += 1
            return k

        i = digits(i)
        if i + 1 < n and text[i] == "." and text[i + 1] in _DIGITS:
            i = digits(i + 1)
        if i < n and text[i] in "eE":
            k = i + 1
            if k < n and text[k] in "+-":
                k += 1
            if k < n and text[k] in _DIGITS:
                i = digits(k)
        end = i
        while end < n and (text[end] in _IDENT_CHARS or text[end] == "."):
            end += 1
        if end != i:
            word = text[start:end]
            self.pos = start
            raise self.error(f"invalid number {word!r}; quote sizes and versions, e.g. \"8GB\"")
        if end - start > MAX_NUMBER_LENGTH:
            self.pos = start
            raise self.error(f"number too long ({end - start} characters, at most {MAX_NUMBER_LENGTH})")
        self.pos = end
        return Token(NUMBER, text[start:end], line, col, start, end)


def tokenize(text: str) -> Iterator[Token]:
    """The tokens of `text`, ending with one EOF token. Raises JdlError at the first character that fits no token."""
    return _Lexer(text).tokens()
