from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from searchengine.errors import QueryError
from searchengine.query import Part, format_query, is_plain_text, parse_query


def text(value: str, weight: float = 1.0) -> Part:
    return Part("text", value, weight)


def image(value: str, weight: float = 1.0) -> Part:
    return Part("image", value, weight)


@pytest.mark.parametrize(
    "query, parts",
    [
        ('"red dress" - "long sleeves" + 0.5:./ref.jpg', [text("red dress"), text("long sleeves", -1), image("./ref.jpg", 0.5)]),
        ("red dress - long sleeves", [text("red dress"), text("long sleeves", -1)]),
        ("  red   dress  ", [text("red dress")]),
        ("t-shirt blue+green -sleeves", [text("t-shirt blue+green"), text("sleeves", -1)]),
        ("men's shoes", [text("men's shoes")]),
        ('"a"-"b"+\'c\'', [text("a"), text("b", -1), text("c")]),
        ('-"cat" + dog', [text("cat", -1), text("dog")]),
        ("+dog", [text("dog")]),
        ("2:dog - .5:cat + 1e-1:bird", [text("dog", 2), text("cat", -0.5), text("bird", 0.1)]),
        ("3.:red dress", [text("red dress", 3)]),
        ('2:"x" + 2:@"y"', [text("x", 2), image("y", 2)]),
        ('"say \\"hi\\" \\\\ \\n"', [text('say "hi" \\ \\n')]),
        ("'it\\'s'", [text("it's")]),
        ("photo.JPG", [image("photo.JPG")]),
        ("a/b", [image("a/b")]),
        ("C:\\pics\\x", [image("C:\\pics\\x")]),
        ("holiday.heic + beach", [image("holiday.heic"), text("beach")]),
        ("photo.jpg in snow", [text("photo.jpg in snow")]),
        ("@cat", [image("cat")]),
        ('@"my pics/a b.png" - @\'c.png\'', [image("my pics/a b.png"), image("c.png", -1)]),
        ("@a.jpg-x", [image("a.jpg-x")]),
        ("2:-x", [text("-x", 2)]),
        ('a"b"', [text('a"b"')]),
    ],
)
def test_parse_examples(query, parts):
    assert parse_query(query) == parts


@pytest.mark.parametrize(
    "query, message",
    [
        ("", "empty query"),
        ("   \t", "empty query"),
        ("red -", "nothing after '-' at column 5 in: red -"),
        ("+", "nothing after '+' at column 1"),
        ("+ + red", "expected a text or image after '+', found '+' at column 3"),
        ("a - -b", "expected a text or image after '-', found '-' at column 5"),
        ('"red', 'unterminated " quote at column 1 in: "red'),
        ("a + 'b\\'", "unterminated ' quote at column 5"),
        ('""', "empty quoted text at column 1"),
        ("a + '  '", "empty quoted text at column 5"),
        ('@""', "empty quoted image path at column 2"),
        ("@", "expected an image path after '@' at column 1"),
        ("a + @ b", "expected an image path after '@' at column 5"),
        ('"a" "b"', "expected + or - before '\"b\"' at column 5 in: \"a\" \"b\""),
        ('"a"b', "expected + or - before 'b' at column 4"),
        ("red @x.jpg", "expected + or - before '@x.jpg' at column 5"),
        ('red "dress"', "expected + or - before '\"dress\"' at column 5"),
        ("-red", "a query needs at least one positive part"),
        ("-red - @b.png", "a query needs at least one positive part"),
        ("0:red", "weight '0' is not a positive number at column 1"),
        ("0.0:red", "weight '0.0' is not a positive number"),
        ("1-2:red", "weight '1-2' is not a positive number"),
        ("1e999:red", "weight '1e999' is not a positive number"),
        ("...:red", "weight '...' is not a positive number"),
        ("2:", "nothing after the weight '2:' at column 1"),
        ("a + 2: b", "nothing after the weight '2:' at column 5"),
    ],
)
def test_parse_errors(query, message):
    with pytest.raises(QueryError) as info:
        parse_query(query)
    assert message in str(info.value)


def test_long_queries_are_cut_to_a_window_around_the_error():
    query = "a " * 60 + '+ "b" "c" + ' + "d " * 60
    with pytest.raises(QueryError) as info:
        parse_query(query)
    message = str(info.value)
    assert message.startswith("expected + or - before '\"c\"' at column 127 in: …")
    assert message.endswith("…") and len(message) < 160


def test_format_query():
    parts = [text('say "hi"'), text("long sleeves", -1), image("./ref.jpg", 0.5), image("C:\\x.png", -2)]
    assert format_query(parts) == '"say \\"hi\\"" - "long sleeves" + 0.5:@"./ref.jpg" - 2:@"C:\\\\x.png"'
    assert format_query([text("a", -1), text("b", 1e-5)]) == '-"a" + 1e-05:"b"'
    assert parse_query(format_query(parts)) == parts


def test_is_plain_text():
    assert is_plain_text(parse_query("red dress"))
    assert is_plain_text(parse_query('"red dress"'))
    assert not is_plain_text(parse_query("2:red dress"))
    assert not is_plain_text(parse_query("red.jpg"))
    assert not is_plain_text(parse_query("red - blue"))
    assert not is_plain_text([])


@pytest.mark.parametrize(
    "args, message",
    [(("text", " ", 1.0), "empty text"), (("image", "x", 0.0), "non-zero"), (("video", "x", 1.0), "unknown")],
)
def test_invalid_parts_are_refused(args, message):
    with pytest.raises(QueryError, match=message):
        Part(*args)


# -- properties ---------------------------------------------------------------------------

_tricky = st.sampled_from(list("\"'\\+-@:./ \t`") + ["1e-1:", " - ", '\\"'])
_any_text = st.lists(st.one_of(_tricky, st.characters(exclude_categories=("Cs",))), min_size=1).map("".join)
_path = st.builds(
    lambda dirs, name, ext: "/".join([*dirs, name + ext]),
    st.lists(st.sampled_from([".", "..", "~", "my pics", "a-b", "C:"]), max_size=3),
    st.text(min_size=1, max_size=8),
    st.sampled_from([".jpg", ".PNG", ".heic", ""]),
)
# bounded away from 0: an in-process library (onnxruntime) may set flush-to-zero, which hypothesis cannot handle
_magnitude = st.one_of(st.just(1.0), st.floats(min_value=1e-6, max_value=1e12, allow_subnormal=False))
_part = st.one_of(
    st.builds(Part, st.just("text"), _any_text.filter(str.strip), _magnitude),
    st.builds(Part, st.just("image"), st.one_of(_path, _any_text).filter(str.strip), _magnitude),
)
_signed = st.tuples(_part, st.booleans()).map(lambda p: Part(p[0].kind, p[0].value, -p[0].weight if p[1] else p[0].weight))
_queries = st.lists(_signed, min_size=1, max_size=5).filter(lambda parts: any(p.weight > 0 for p in parts))


@given(_queries)
def test_format_query_round_trips(parts):
    assert parse_query(format_query(parts)) == parts


@given(st.one_of(st.text(), st.lists(st.one_of(_tricky, st.sampled_from(list("ab0.e5 jpg\n")))).map("".join)))
def test_parse_query_returns_parts_or_raises_query_error(query):
    try:
        parts = parse_query(query)
    except QueryError:
        return
    assert parts and all(isinstance(p, Part) for p in parts) and any(p.weight > 0 for p in parts)
