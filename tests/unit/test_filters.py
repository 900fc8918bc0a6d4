from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from searchengine.errors import QueryError
from searchengine.filters import (
    And,
    Compare,
    In,
    Node,
    Not,
    Or,
    all_of,
    as_filter,
    evaluate,
    fields,
    format_where,
    from_mapping,
    normalize_text,
    parse_filter_option,
    parse_where,
)

a1, b2, c3 = Compare("a", "=", 1.0), Compare("b", "=", 2.0), Compare("c", "=", 3.0)


@pytest.mark.parametrize(
    "text, node",
    [
        ('category = "shoes" and price < 50', And((Compare("category", "=", "shoes"), Compare("price", "<", 50.0)))),
        ("a == 1", a1),
        ("a=1", a1),
        ("price>=-3.5", Compare("price", ">=", -3.5)),
        ("n != 1e3", Compare("n", "!=", 1000.0)),
        ("x <= 'it\\'s'", Compare("x", "<=", "it's")),
        ("title ~ Red", Compare("title", "~", "Red")),
        ("color = shoes", Compare("color", "=", "shoes")),
        ("taken >= 2020-01-01", Compare("taken", ">=", "2020-01-01")),
        ("at = 12:30", Compare("at", "=", "12:30")),
        ('zip = "02139"', Compare("zip", "=", "02139")),
        ("x = inf", Compare("x", "=", "inf")),
        ("x = and", Compare("x", "=", "and")),
        ("exif.make = Canon", Compare("exif.make", "=", "Canon")),
        ("`shoe size` > 42", Compare("shoe size", ">", 42.0)),
        ("`a\\`b` = 1", Compare("a`b", "=", 1.0)),
        ("ville = Zürich", Compare("ville", "=", "Zürich")),
        ('tag in (red, "dark blue", 3)', In("tag", ("red", "dark blue", 3.0))),
        ("tag NOT IN (red)", Not(In("tag", ("red",)))),
        ("(a = 1)", a1),
    ],
)
def test_parse_where_examples(text, node):
    assert parse_where(text) == node


def test_precedence():
    assert parse_where("a = 1 or b = 2 and c = 3") == Or((a1, And((b2, c3))))
    assert parse_where("a = 1 and b = 2 or c = 3") == Or((And((a1, b2)), c3))
    assert parse_where("(a = 1 or b = 2) and c = 3") == And((Or((a1, b2)), c3))
    assert parse_where("not a = 1 and b = 2") == And((Not(a1), b2))
    assert parse_where("not (a = 1 and b = 2)") == Not(And((a1, b2)))
    assert parse_where("NOT not a = 1 Or b = 2 AND c = 3") == Or((Not(Not(a1)), And((b2, c3))))
    assert parse_where("a = 1 and (b = 2 and c = 3)") == And((a1, And((b2, c3))))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty filter expression"),
        ('color = "red")', "unexpected ')' at column 14 in: color = \"red\")"),
        ("color = ", "expected a value at column 9 in: color ="),
        ("color = )", "expected a value, found ')' at column 9"),
        ("color red", "expected an operator after 'color', found 'red' at column 7"),
        ("50 = x", "expected a field name, found '50' at column 1"),
        ("`` = x", "expected a field name, found '``' at column 1"),
        ("a = 1 and", "expected a field name at column 10"),
        ("(a = 1", "expected ')' at column 7"),
        ("a in 1", "expected '(', found '1' at column 6"),
        ("a in (1,)", "expected a value, found ')' at column 9"),
        ("a not = 1", "expected 'in', found '=' at column 7"),
        ("a = 1 b = 2", "unexpected 'b' at column 7"),
        ("a ! 1", "unexpected '!' at column 3"),
        ('a = "red', 'unterminated " quote at column 5'),
        ("(" * 150 + "a = 1" + ")" * 150, "filter nested more than 100 levels deep"),
        ("not " * 150 + "a = 1", "filter nested more than 100 levels deep"),
    ],
)
def test_parse_where_errors(text, message):
    with pytest.raises(QueryError) as info:
        parse_where(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "option, node",
    [
        ("category=shoes", Compare("category", "=", "shoes")),
        ("category==shoes", Compare("category", "=", "shoes")),
        (" price = 10 ", Compare("price", "=", 10.0)),
        ("k!=v", Compare("k", "!=", "v")),
        ("k>=1", Compare("k", ">=", 1.0)),
        ("k<=1", Compare("k", "<=", 1.0)),
        ("k>1", Compare("k", ">", 1.0)),
        ("k<1", Compare("k", "<", 1.0)),
        ("k~red", Compare("k", "~", "red")),
        ("shoe size=42", Compare("shoe size", "=", 42.0)),
        ('k="50"', Compare("k", "=", "50")),
        ("k='a=b..c'", Compare("k", "=", "a=b..c")),
        ("k=a=b", Compare("k", "=", "a=b")),
        ("price=10..50", And((Compare("price", ">=", 10.0), Compare("price", "<=", 50.0)))),
        ("price=10..", Compare("price", ">=", 10.0)),
        ("price=..50", Compare("price", "<=", 50.0)),
        ("taken=2020-01-01..2020-12-31", And((Compare("taken", ">=", "2020-01-01"), Compare("taken", "<=", "2020-12-31")))),
    ],
)
def test_filter_options(option, node):
    assert parse_filter_option(option) == node


@pytest.mark.parametrize(
    "option, message",
    [
        ("category", "has no operator"),
        ("=shoes", "has no field name"),
        (" >= 3", "has no field name"),
        ("category=", "has no value"),
        ("category=  ", "has no value"),
        ("price=..", "range with no bounds"),
        ('k="a"b', "unexpected text after the closing quote"),
        ('k="a', "unterminated"),
    ],
)
def test_filter_option_errors(option, message):
    with pytest.raises(QueryError, match=message):
        parse_filter_option(option)


def test_mappings():
    node = from_mapping({"category": "shoes", "price": (None, 50), "color": ["red", "blue"], "size": 42})
    assert node == And((
        Compare("category", "=", "shoes"),
        Compare("price", "<=", 50.0),
        In("color", ("red", "blue")),
        Compare("size", "=", 42.0),
    ))
    assert from_mapping({"price": (10, 20.5)}) == And((Compare("price", ">=", 10.0), Compare("price", "<=", 20.5)))
    assert from_mapping({"price": (10, None)}) == Compare("price", ">=", 10.0)
    assert from_mapping({"n": "5"}) == Compare("n", "=", "5")


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"a": True}, "not a string or a finite number"),
        ({"a": {"b": 1}}, "not a string or a finite number"),
        ({"a": None}, "not a string or a finite number"),
        ({"a": float("nan")}, "not a string or a finite number"),
        ({"a": [1, False]}, "not a string or a finite number"),
        ({"a": (1, 2, 3)}, "must be a \\(low, high\\) pair"),
        ({"a": (None, None)}, "must be a \\(low, high\\) pair"),
        ({"a": []}, "empty list"),
        ({"": 1}, "non-empty strings"),
        ({1: 1}, "non-empty strings"),
        ({}, "empty filter mapping"),
    ],
)
def test_mapping_errors(mapping, message):
    with pytest.raises(QueryError, match=message):
        from_mapping(mapping)


def test_as_filter_and_all_of():
    assert as_filter(None) is None
    assert as_filter({}) is None
    assert as_filter([]) is None
    assert as_filter("a = 1") == a1
    assert as_filter(b2) == b2
    assert as_filter({"a": 1}) == a1
    assert as_filter(["a = 1", None, {"b": 2, "c": 3}, ("a = 1",)]) == And((a1, b2, c3, a1))
    with pytest.raises(QueryError, match="empty filter expression"):
        as_filter(" ")
    with pytest.raises(QueryError, match="unsupported filter 5"):
        as_filter(5)
    assert all_of([]) is None
    assert all_of([None, a1, None]) == a1
    assert all_of([And((a1, b2)), Or((b2, c3)), And((c3,))]) == And((a1, b2, Or((b2, c3)), c3))


def test_fields():
    assert fields(parse_where("a = 1 or not (b in (1) and `c d` ~ x)")) == {"a", "b", "c d"}


def test_normalize_text():
    assert normalize_text("  Straße ") == "strasse"


RECORD = {"tags": ["Red", "Dark Blue"], "price": [49.5], "size": ["42", "XL"], "taken": ["2021-06-01"], "n": [3, True]}


@pytest.mark.parametrize(
    "where, expected",
    [
        ("tags = red", True),  # any value, case-insensitive
        ("tags = 'dark blue'", True),
        ("tags = blue", False),
        ("tags ~ BLU", True),
        ("tags != red", False),  # != is not (=): one value equals red
        ("tags != green", True),
        ("missing = x", False),
        ("missing != x", True),
        ("missing ~ x", False),
        ("missing in (x)", False),
        ("missing not in (x)", True),
        ("price < 50", True),
        ("price > 50", False),
        ("price = 49.5", True),
        ("price ~ 49", True),
        ("size >= 40", True),  # "42" reads as a number; "XL" is skipped
        ("size = 42", True),
        ("size = xl", True),
        ("size > 100", False),
        ("size ~ 4", True),
        ("taken >= 2021-01-01", True),  # ISO dates compare as strings
        ("taken < '2021-06-01'", False),
        ("taken <= '2021-06-01'", True),
        ("tags > a", True),
        ("n = 1", False),  # booleans are not numbers
        ("n = true", True),
        ("n ~ 3", True),
        ("tags in (green, RED)", True),
        ("size in (41, 42)", True),
        ("tags in (green)", False),
        ("tags = red and price < 50", True),
        ("tags = green or price > 50", False),
        ("not tags = green", True),
    ],
)
def test_evaluate(where, expected):
    assert evaluate(parse_where(where), RECORD) is expected


def test_evaluate_number_literal_in_contains_uses_its_short_form():
    assert evaluate(Compare("x", "~", 50.0), {"x": ["150 cm"]})
    assert evaluate(Compare("x", "~", 2.5), {"x": ["v2.5"]})
    assert not evaluate(Compare("x", "~", 50.0), {"x": ["5.0"]})


# -- properties ---------------------------------------------------------------------------

_fields = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,6}", fullmatch=True), st.sampled_from(["and", "IN", "a b"]),
                    st.text(min_size=1))
_scalars = st.one_of(st.text(), st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False))
_leaves = st.one_of(
    st.builds(Compare, _fields, st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "~"]), _scalars),
    st.builds(In, _fields, st.lists(_scalars, min_size=1, max_size=3).map(tuple)),
)
_nodes = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.builds(Not, children),
        st.builds(And, st.lists(children, min_size=1, max_size=3).map(tuple)),
        st.builds(Or, st.lists(children, min_size=1, max_size=3).map(tuple)),
    ),
    max_leaves=12,
)


def normalized(node: Node) -> Node:
    """The AST with one-item And/Or replaced by their item (what a where-string can express)."""
    if isinstance(node, (And, Or)):
        items = tuple(map(normalized, node.items))
        return items[0] if len(items) == 1 else type(node)(items)
    return Not(normalized(node.item)) if isinstance(node, Not) else node


@given(_nodes)
def test_format_where_round_trips(node):
    assert parse_where(format_where(node)) == normalized(node)


_where_chars = st.sampled_from(list("ab1.-()=<>!~,\"'`\\ ") + ["and", "or", "not", "in", "1e3"])


@given(st.one_of(st.text(), st.lists(_where_chars, max_size=30).map("".join)))
def test_parse_where_returns_a_node_or_raises_query_error(text):
    try:
        node = parse_where(text)
    except QueryError:
        return
    assert isinstance(node, (Compare, In, And, Or, Not))


@given(st.text())
def test_parse_filter_option_returns_a_node_or_raises_query_error(text):
    try:
        node = parse_filter_option(text)
    except QueryError:
        return
    assert isinstance(node, (Compare, And))
