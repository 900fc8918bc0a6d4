r"""Metadata filters: an AST, its parsers and its reference semantics.

Filters come as a where-expression (``category = "shoes" and price < 50``), as ``--filter``
options (``price=10..50``) or, in Python, as a mapping (``{"price": (None, 50)}``); all become
the same AST. The where grammar, in EBNF (keywords are case-insensitive)::

    where      = or ;
    or         = and { "or" and } ;
    and        = unary { "and" unary } ;
    unary      = "not" unary | "(" or ")" | comparison ;
    comparison = field op value
               | field [ "not" ] "in" "(" value { "," value } ")" ;
    op         = "=" | "==" | "!=" | "<" | "<=" | ">" | ">=" | "~" ;    (* ~ contains *)
    field      = letter { letter | digit | "_" | "." } | "`" name "`" ;
    value      = quoted | word ;
    quoted     = '"' { char | escape } '"' | "'" { char | escape } "'" ;
    escape     = "\" ( '"' | "'" | "`" | "\" ) ;      (* any other backslash is kept *)
    word       = wordchar { wordchar } ;     (* letters, digits and _ . : / + - *)

A word is a number when ``float()`` reads all of it as a finite number (``50``, ``-3.5``, ``1e3``),
else a string (``shoes``, ``2020-01-01``); quoted values are always strings. ``not in`` is
``Not(In(...))``.

Semantics (:func:`evaluate`; the SQL compiler implements the same): a record maps each field to
a list of values. A comparison holds when ANY value of the field satisfies it, so none holds on a
missing field. A number literal compares with values that are numbers or strings ``float()``
reads, as floats; other values never match. A string literal compares case-insensitively with
:func:`normalize_text` of ``str(value)`` (lexicographically for ``<`` and friends, so ISO dates
order correctly). ``~`` is substring containment of normalized strings (a number literal in its
short form: ``50``, ``2.5``). ``!=`` is ``not (field = value)``, so a missing field satisfies it.
``in`` holds when any value equals any listed literal.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Union

from .errors import QueryError
from .query import scan_quoted, syntax_error

__all__ = [
    "Scalar", "Compare", "In", "And", "Or", "Not", "Node", "parse_where", "parse_filter_option",
    "from_mapping", "as_filter", "all_of", "fields", "evaluate", "normalize_text", "format_where",
]

Scalar = Union[str, float]
Op = Literal["=", "!=", "<", "<=", ">", ">=", "~"]


@dataclass(frozen=True)
class Compare:
    """``field op value``."""

    field: str
    op: Op
    value: Scalar


@dataclass(frozen=True)
class In:
    """``field in (values...)``."""

    field: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class And:
    """All items hold."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """Some item holds."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """The item does not hold."""

    item: Node


Node = Union[Compare, In, And, Or, Not]

_KEYWORDS = frozenset({"and", "or", "not", "in"})
_OP = re.compile(r"==|!=|<=|>=|=|<|>|~")  # longest first
_WORD = re.compile(r"[\w.:/+-]+")
_FIELD = re.compile(r"[^\W\d][\w.]*")
_MAX_DEPTH = 100
_ORDER = {"=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def normalize_text(value: str) -> str:
    """The form string comparisons use (and the store keeps): case-folded, stripped."""
    return value.casefold().strip()


def _typed(word: str) -> Scalar:
    """A finite number when ``float()`` reads all of the word, else the word itself."""
    try:
        number = float(word)
    except ValueError:
        return word
    return number if math.isfinite(number) else word


def _number_text(number: float) -> str:
    text = repr(float(number))
    return text[:-2] if text.endswith(".0") else text


# -- where-expressions ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: Literal["word", "string", "name", "op", "punct", "end"]
    value: str
    pos: int
    end: int


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            tokens.append(_Token("end", "", pos, pos))
            return tokens
        c = text[pos]
        if c in "\"'`":
            value, end = scan_quoted(text, pos)
            tokens.append(_Token("name" if c == "`" else "string", value, pos, end))
        elif c in "(),":
            tokens.append(_Token("punct", c, pos, pos + 1))
        elif match := _OP.match(text, pos):
            tokens.append(_Token("op", "=" if match.group() == "==" else match.group(), pos, match.end()))
        elif match := _WORD.match(text, pos):
            tokens.append(_Token("word", match.group(), pos, match.end()))
        else:
            raise syntax_error(f"unexpected '{c}'", text, pos)
        pos = tokens[-1].end


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.tokens, self.i = text, _tokenize(text), 0

    def next(self) -> _Token:
        token = self.tokens[self.i]
        self.i += token.kind != "end"
        return token

    def fail(self, expected: str, token: _Token) -> QueryError:
        found = "" if token.kind == "end" else f", found '{self.text[token.pos : token.end]}'"
        return syntax_error(f"expected {expected}{found}", self.text, token.pos)

    def keyword(self, word: str) -> bool:
        token = self.tokens[self.i]
        if token.kind == "word" and token.value.casefold() == word:
            self.i += 1
            return True
        return False

    def punct(self, char: str) -> bool:
        token = self.tokens[self.i]
        if token.kind == "punct" and token.value == char:
            self.i += 1
            return True
        return False

    def expect(self, char: str) -> None:
        if not self.punct(char):
            raise self.fail(f"'{char}'", self.tokens[self.i])

    def or_(self, depth: int) -> Node:
        items = [self.and_(depth)]
        while self.keyword("or"):
            items.append(self.and_(depth))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_(self, depth: int) -> Node:
        items = [self.unary(depth)]
        while self.keyword("and"):
            items.append(self.unary(depth))
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self, depth: int) -> Node:
        if depth > _MAX_DEPTH:
            raise syntax_error(f"filter nested more than {_MAX_DEPTH} levels deep", self.text, self.tokens[self.i].pos)
        if self.keyword("not"):
            return Not(self.unary(depth + 1))
        if self.punct("("):
            node = self.or_(depth + 1)
            self.expect(")")
            return node
        return self.comparison()

    def comparison(self) -> Node:
        token = self.next()
        if not ((token.kind == "name" and token.value) or (token.kind == "word" and _FIELD.fullmatch(token.value))):
            raise self.fail("a field name", token)
        field = token.value
        if self.tokens[self.i].kind == "op":
            op = self.next().value
            return Compare(field, op, self.value())
        negated = self.keyword("not")
        if not self.keyword("in"):
            raise self.fail("'in'" if negated else f"an operator after '{field}'", self.tokens[self.i])
        self.expect("(")
        values = [self.value()]
        while self.punct(","):
            values.append(self.value())
        self.expect(")")
        node = In(field, tuple(values))
        return Not(node) if negated else node

    def value(self) -> Scalar:
        token = self.next()
        if token.kind == "string":
            return token.value
        if token.kind == "word":
            return _typed(token.value)
        raise self.fail("a value", token)


def parse_where(text: str) -> Node:
    """Parse a where-expression (see the module docstring for the grammar)."""
    if not text.strip():
        raise QueryError("empty filter expression")
    parser = _Parser(text)
    node = parser.or_(0)
    token = parser.tokens[parser.i]
    if token.kind != "end":
        raise syntax_error(f"unexpected '{text[token.pos : token.end]}'", text, token.pos)
    return node


def _quote(value: str, quote: str = '"') -> str:
    return quote + value.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


def _format_field(field: str) -> str:
    return field if _FIELD.fullmatch(field) and field.casefold() not in _KEYWORDS else _quote(field, "`")


def _format_value(value: Scalar) -> str:
    return _quote(value) if isinstance(value, str) else _number_text(value)


def _wrapped(item: Node, *kinds: type) -> str:
    text = format_where(item)
    return f"({text})" if isinstance(item, kinds) else text


def format_where(node: Node) -> str:
    """A where-expression for the AST: ``parse_where(format_where(node)) == node`` for ASTs whose
    ``And``/``Or`` have at least two items (a one-item ``And``/``Or`` comes back as its item)."""

    match node:
        case Compare(field, op, value):
            return f"{_format_field(field)} {op} {_format_value(value)}"
        case In(field, values):
            return f"{_format_field(field)} in ({', '.join(map(_format_value, values))})"
        case Not(In(field, values)):
            return f"{_format_field(field)} not in ({', '.join(map(_format_value, values))})"
        case Not(item):
            return f"not {_wrapped(item, And, Or)}"
        case And(items):
            return " and ".join(_wrapped(item, And, Or) for item in items)
        case Or(items):
            return " or ".join(_wrapped(item, Or) for item in items)
    raise TypeError(f"not a filter node: {node!r}")


# -- --filter options and mappings ----------------------------------------------------------


def _range(field: str, low: Scalar | None, high: Scalar | None) -> Node:
    """``low <= field <= high``, either end open when ``None`` (not both)."""
    bounds = [Compare(field, op, v) for op, v in ((">=", low), ("<=", high)) if v is not None]
    return bounds[0] if len(bounds) == 1 else And(tuple(bounds))


def _option_value(raw: str, option: str) -> Scalar:
    if raw[:1] not in ("'", '"'):
        return _typed(raw)
    value, end = scan_quoted(raw, 0)
    if end != len(raw):
        raise QueryError(f"unexpected text after the closing quote in filter {option!r}")
    return value


def parse_filter_option(text: str) -> Node:
    """One ``--filter`` value: ``key=value`` (or ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``~``) or an
    inclusive range ``key=lo..hi``, ``key=lo..``, ``key=..hi``. Unquoted values are numbers when
    ``float()`` reads them, else strings."""
    match = _OP.search(text)
    if not match:
        raise QueryError(f"filter {text!r} has no operator; use key=value, key>=value or key=low..high")
    field, raw = text[: match.start()].strip(), text[match.end() :].strip()
    op = "=" if match.group() == "==" else match.group()
    if not field:
        raise QueryError(f"filter {text!r} has no field name before '{op}'")
    if not raw:
        raise QueryError(f"filter {text!r} has no value after '{op}'")
    if op == "=" and raw[0] not in "\"'" and ".." in raw:
        low, high = (side.strip() for side in raw.split("..", 1))
        if not (low or high):
            raise QueryError(f"filter {text!r} has a range with no bounds")
        return _range(field, _typed(low) if low else None, _typed(high) if high else None)
    return Compare(field, op, _option_value(raw, text))


def _scalar(field: str, value: object) -> Scalar:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise QueryError(f"the value {value!r} for filter field {field!r} is not a string or a finite number")


def _mapping_item(field: object, value: object) -> Node:
    if not (isinstance(field, str) and field):
        raise QueryError(f"filter field names must be non-empty strings, got {field!r}")
    if isinstance(value, tuple):
        if len(value) != 2 or value == (None, None):
            raise QueryError(f"the range for filter field {field!r} must be a (low, high) pair with a bound")
        low, high = (None if v is None else _scalar(field, v) for v in value)
        return _range(field, low, high)
    if isinstance(value, list):
        if not value:
            raise QueryError(f"empty list of values for filter field {field!r}")
        return In(field, tuple(_scalar(field, v) for v in value))
    return Compare(field, "=", _scalar(field, value))


def from_mapping(mapping: Mapping[str, object]) -> Node:
    """``{"k": v}`` → ``k = v``; ``{"k": [a, b]}`` → ``k in (a, b)``; ``{"k": (lo, hi)}`` → an inclusive
    range (``None`` for an open end); several keys → AND."""
    node = all_of(_mapping_item(field, value) for field, value in mapping.items())
    if node is None:
        raise QueryError("an empty filter mapping has no conditions")
    return node


FilterSpec = Union[None, str, Node, Mapping[str, object], Sequence["FilterSpec"]]


def as_filter(spec: FilterSpec) -> Node | None:
    """What the Python API accepts as a filter: ``None``, a where-string, a node, a mapping (empty: no
    filter) or a sequence of these (AND of its items)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return parse_where(spec)
    if isinstance(spec, (Compare, In, And, Or, Not)):
        return spec
    if isinstance(spec, Mapping):
        return from_mapping(spec) if spec else None
    if isinstance(spec, Sequence):
        return all_of(as_filter(item) for item in spec)
    raise QueryError(f"unsupported filter {spec!r}; use a where-string, a mapping or a list of them")


def all_of(nodes: Iterable[Node | None]) -> Node | None:
    """The AND of the nodes, dropping ``None`` and flattening nested ``And``; ``None`` when empty."""
    items = tuple(item for node in nodes if node is not None for item in (node.items if isinstance(node, And) else [node]))
    if not items:
        return None
    return items[0] if len(items) == 1 else And(items)


def fields(node: Node) -> set[str]:
    """The field names a filter reads."""
    match node:
        case Compare(field) | In(field):
            return {field}
        case Not(item):
            return fields(item)
        case And(items) | Or(items):
            return set().union(*map(fields, items))
    raise TypeError(f"not a filter node: {node!r}")


# -- reference semantics --------------------------------------------------------------------


def _as_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None  # as the store keeps numbers


def _matches(value: object, op: str, literal: Scalar) -> bool:
    if op == "~":
        needle = literal if isinstance(literal, str) else _number_text(literal)
        return normalize_text(needle) in normalize_text(str(value))
    if isinstance(literal, str):
        return _ORDER[op](normalize_text(str(value)), normalize_text(literal))
    number = _as_number(value)
    return number is not None and _ORDER[op](number, literal)


def evaluate(node: Node, record: Mapping[str, Sequence[object]]) -> bool:
    """Whether a record (field → list of values) satisfies the filter; the reference semantics."""
    match node:
        case Compare(field, "!=", value):
            return not evaluate(Compare(field, "=", value), record)
        case Compare(field, op, value):
            return any(_matches(v, op, value) for v in record.get(field, ()))
        case In(field, values):
            return any(_matches(v, "=", literal) for v in record.get(field, ()) for literal in values)
        case Not(item):
            return not evaluate(item, record)
        case And(items):
            return all(evaluate(item, record) for item in items)
        case Or(items):
            return any(evaluate(item, record) for item in items)
    raise TypeError(f"not a filter node: {node!r}")
