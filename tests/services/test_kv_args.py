"""The KV argument parser's fast path for ``["get", key]`` against its generic path."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trimaran import limits
from trimaran.errors import TrimaranError
from trimaran.protocols import command_shape
from trimaran.services import kv_args

#: Keys at and around every bound the fast path tests: empty, short, the limit, one over, not bytes.
keys = st.one_of(
    st.binary(max_size=8),
    st.integers(min_value=limits.key_bytes_max - 1, max_value=limits.key_bytes_max + 1).map(lambda n: b"k" * n),
    st.text(max_size=4),
    st.integers(),
    st.none(),
    st.lists(st.binary(max_size=2), max_size=2),
)
#: Messages shaped like a get, or nearly: other ops, a missing or an extra argument, an options map.
messages = st.one_of(
    st.tuples(st.sampled_from(["get", "mget", "GET", "scan", "stats"]), keys).map(list),
    st.tuples(st.just("get"), keys, st.one_of(st.none(), st.just({}), st.just({"x": 1}), keys)).map(list),
    st.just(["get"]),
    st.just([]),
    st.tuples(st.just(b"get"), keys).map(list),
    st.tuples(st.just("get"), keys).map(tuple),
)


def outcome(parse: Any, message: Any) -> tuple[str, Any]:
    try:
        return "ok", parse(message)
    except TrimaranError as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=300)
@given(messages)
def test_parse_query_answers_as_the_generic_parser_does(message: Any) -> None:
    generic = outcome(lambda m: command_shape.parse(m, "kv", "query", kv_args._QUERY_PARSERS), list(message) if type(message) is list else message)
    assert outcome(kv_args.parse_query, message) == generic


def test_a_valid_get_parses_to_its_key() -> None:
    assert kv_args.parse_query(["get", b"user:1"]) == kv_args.GetQuery(b"user:1")
    assert kv_args.parse_query(["get", b"k" * limits.key_bytes_max]) == kv_args.GetQuery(b"k" * limits.key_bytes_max)
