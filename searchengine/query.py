r"""Composed queries: weighted positive and negative parts mixing text and images.

``"red dress" - "long sleeves" + 0.5:./ref.jpg`` asks for images like *red dress*, unlike
*long sleeves* and, at half weight, like the image ``./ref.jpg``. The grammar, in EBNF::

    query  = [ sign ] term { sign term } ;
    sign   = "+" | "-" ;                    (* an operator only at the start of a token *)
    term   = [ weight ":" ] item ;          (* no space around the ":" *)
    weight = positive decimal number ;      (* 2, 0.5, .5, 1e-1 *)
    item   = quoted | "@" quoted | "@" path | words ;
    quoted = '"' { char | escape } '"' | "'" { char | escape } "'" ;
    escape = "\" ( '"' | "'" | "`" | "\" ) ;  (* any other backslash is kept as written *)
    path   = non-space { non-space } ;
    words  = word { word } ;                (* up to the next sign, quote or "@" token *)
    word   = non-space { non-space } ;

``+`` and ``-`` are operators only at the start of the query, after whitespace or right after
a closing quote, and a quote or ``@`` opens an item only where a term or word starts; elsewhere
they are ordinary characters (``t-shirt``, ``blue+green``, ``men's``; ``-sleeves`` negates ``sleeves``).
A part's weight is its sign times its weight (default 1). Quoted strings are always text,
``@`` items always images; a run of bare words is one text part joined by single spaces,
unless it is a single word that looks like an image path (it contains ``/`` or ``\``, or
ends with an image extension such as ``.jpg``). Quote text that starts like a weight
(``"2:30 pm"``). A query needs at least one positive part.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import QueryError

__all__ = ["Part", "parse_query", "format_query", "is_plain_text", "scan_quoted", "syntax_error"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif")
_QUOTES = "\"'"
_WEIGHT = re.compile(r"[0-9.][0-9.eE+-]*:")


@dataclass(frozen=True)
class Part:
    """One weighted part of a query: a text, or an image path as written (not resolved or checked)."""

    kind: Literal["text", "image"]
    value: str
    weight: float  # signed: negative parts have weight < 0

    def __post_init__(self) -> None:
        if self.kind not in ("text", "image"):
            raise QueryError(f"unknown query part kind {self.kind!r}; use 'text' or 'image'")
        if not self.value.strip():
            raise QueryError(f"empty {self.kind} in a query part")
        if not (math.isfinite(self.weight) and self.weight != 0):
            raise QueryError(f"a query part's weight must be a non-zero number, got {self.weight!r}")


def syntax_error(problem: str, text: str, pos: int) -> QueryError:
    """``QueryError("<problem> at column <pos + 1> in: <text>")``, the text cut to a window when long."""
    excerpt = text
    if len(text) > 80:
        start = max(0, pos - 40)
        excerpt = ("…" if start else "") + text[start : start + 80] + ("…" if start + 80 < len(text) else "")
    return QueryError(f"{problem} at column {pos + 1} in: {excerpt}")


def scan_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read the string quoted by ``text[pos]``: its value and the index after the closing quote.

    A backslash escapes a quote character (``"``, ``'``, or a backquote) or a backslash; any other
    backslash is kept as written.
    """
    quote, out, i = text[pos], [], pos + 1
    while i < len(text):
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in "\"'`\\":
                out.append(nxt)
                i += 2
                continue
        out.append(c)
        i += 1
    raise syntax_error(f"unterminated {quote} quote", text, pos)


def _looks_like_image(word: str) -> bool:
    return "/" in word or "\\" in word or word.lower().endswith(_IMAGE_SUFFIXES)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at(self, chars: str) -> bool:
        return bool(self.peek()) and self.peek() in chars

    def at_space_or_end(self) -> bool:
        return not self.peek() or self.peek().isspace()

    def skip_space(self) -> None:
        while self.peek().isspace():
            self.pos += 1

    def fail(self, problem: str, pos: int | None = None) -> QueryError:
        return syntax_error(problem, self.text, self.pos if pos is None else pos)

    def word(self) -> str:
        start = self.pos
        while not self.at_space_or_end():
            self.pos += 1
        return self.text[start : self.pos]

    def token(self) -> str:
        """The next whitespace-delimited run, for messages (consumes nothing)."""
        match = re.match(r"\S{1,20}", self.text[self.pos :])
        return match.group() if match else ""

    def quoted(self, what: str) -> str:
        start = self.pos
        value, self.pos = scan_quoted(self.text, start)
        if not value.strip():
            raise self.fail(f"empty quoted {what}", start)
        return value

    def term(self, sign: float) -> Part:
        start, weight = self.pos, 1.0
        if match := _WEIGHT.match(self.text, self.pos):
            raw = match.group()[:-1]
            try:
                weight = float(raw)
            except ValueError:
                weight = math.nan
            if not (math.isfinite(weight) and weight > 0):
                raise self.fail(f"weight '{raw}' is not a positive number", start)
            self.pos = match.end()
            if self.at_space_or_end():
                raise self.fail(f"nothing after the weight '{raw}:'", start)
        return self.item(sign * weight)

    def item(self, weight: float) -> Part:
        if self.at(_QUOTES):
            return Part("text", self.quoted("text"), weight)
        if self.peek() == "@":
            self.pos += 1
            if self.at(_QUOTES):
                return Part("image", self.quoted("image path"), weight)
            if self.at_space_or_end():
                raise self.fail("expected an image path after '@'", self.pos - 1)
            return Part("image", self.word(), weight)
        words = [self.word()]
        while True:
            end = self.pos
            self.skip_space()
            if not self.peek() or self.at("+-@" + _QUOTES):
                self.pos = end
                break
            words.append(self.word())
        if len(words) == 1 and _looks_like_image(words[0]):
            return Part("image", words[0], weight)
        return Part("text", " ".join(words), weight)


def parse_query(query: str) -> list[Part]:
    """Parse a composed query into its parts (see the module docstring for the grammar)."""
    scanner = _Scanner(query)
    scanner.skip_space()
    if not scanner.peek():
        raise QueryError("empty query")
    parts: list[Part] = []
    while scanner.peek():
        sign = 1.0
        if scanner.at("+-"):
            op, op_pos = scanner.peek(), scanner.pos
            sign = -1.0 if op == "-" else 1.0
            scanner.pos += 1
            scanner.skip_space()
            if not scanner.peek():
                raise scanner.fail(f"nothing after '{op}'", op_pos)
            if scanner.at("+-"):
                raise scanner.fail(f"expected a text or image after '{op}', found '{scanner.peek()}'")
        elif parts:
            raise scanner.fail(f"expected + or - before '{scanner.token()}'")
        parts.append(scanner.term(sign))
        scanner.skip_space()
    if all(part.weight < 0 for part in parts):
        raise QueryError("a query needs at least one positive part")
    return parts


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _weight_text(weight: float) -> str:
    text = repr(float(weight))
    return text[:-2] if text.endswith(".0") else text


def format_query(parts: Sequence[Part]) -> str:
    """The query text of parts; ``parse_query(format_query(parts)) == parts`` for any valid parts."""
    out = []
    for i, part in enumerate(parts):
        weight = abs(part.weight)
        term = (f"{_weight_text(weight)}:" if weight != 1 else "") + ("@" if part.kind == "image" else "")
        term += _quote(part.value)
        if i:
            out.append(" - " if part.weight < 0 else " + ")
        elif part.weight < 0:
            out.append("-")
        out.append(term)
    return "".join(out)


def is_plain_text(parts: Sequence[Part]) -> bool:
    """Whether the query is a single positive text part of weight 1."""
    return len(parts) == 1 and parts[0].kind == "text" and parts[0].weight == 1
