"""The sans-IO RESP codec (issue 12): client commands in, replies out.

Parsing is checked against commands encoded as a client encodes them (our own packer and
hiredis's ``pack_command``), under every split of the byte stream and every truncation; every limit
is checked on a declared length alone (no body sent, and with tracemalloc: nothing the size of the
declared length allocated). Replies are checked byte for byte and read back with hiredis's reader
and redis-py's pure-Python RESP2/RESP3 parsers, which are what redis-py clients run.
"""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz import fuzz_settings
from trimaran import limits
from trimaran.errors import ProtocolError
from trimaran.protocols import resp
from trimaran.protocols.resp import (
    NOAUTH,
    NULL_ARRAY,
    OK,
    OOM,
    PONG,
    WRONGTYPE,
    BigNumber,
    ErrorReply,
    Push,
    RespParser,
    SetReply,
    SimpleString,
    Verbatim,
    encode,
    encode_many,
    protocol_error_reply,
    split_inline,
)
from trimaran.services import kv_args

import hiredis  # a declared test extra (setup.cfg): the reader the replies are checked against


def pack(*args: bytes) -> bytes:
    """A command as redis-py and redis-cli send it: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def parse_chunks(chunks: list[bytes], parser: RespParser | None = None) -> tuple[list[list[bytes]], str | None]:
    """Feed the chunks in order, taking every command out after each; the commands and the error."""
    parser = parser or RespParser()
    commands: list[list[bytes]] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (command := parser.next_command()) is not None:
                commands.append(command)
    except ProtocolError as error:
        return commands, error.message
    return commands, None


def parse(data: bytes, **limits_: int) -> list[list[bytes]]:
    commands, error = parse_chunks([data], RespParser(**limits_))
    assert error is None, error
    return commands


def parse_error(data: bytes, **limits_: int) -> str:
    commands, error = parse_chunks([data], RespParser(**limits_))
    assert error is not None, commands
    return error


# --- requests ------------------------------------------------------------------------------------


def test_a_multibulk_command_comes_out_as_its_arguments() -> None:
    assert parse(pack(b"SET", b"key", b"value")) == [[b"SET", b"key", b"value"]]
    assert parse(pack(b"GET", b"")) == [[b"GET", b""]]


def test_an_argument_may_hold_any_bytes_crlf_included() -> None:
    value = b"a\r\nb\r\n*1\r\n$3\r\n\x00\xff"
    assert parse(pack(b"SET", b"k", value) + pack(b"GET", b"k")) == [[b"SET", b"k", value], [b"GET", b"k"]]


def test_pipelined_commands_in_one_feed_come_out_in_order() -> None:
    stream = b"".join(pack(b"SET", b"k%d" % n, b"v" * n) for n in range(100))
    assert parse(stream) == [[b"SET", b"k%d" % n, b"v" * n] for n in range(100)]


def test_a_command_split_at_every_byte_comes_out_once_whole() -> None:
    stream = pack(b"SET", b"k", b"hello\r\n") + b"PING\r\n" + pack(b"GET", b"k")
    expected = [[b"SET", b"k", b"hello\r\n"], [b"PING"], [b"GET", b"k"]]
    assert parse_chunks([stream[i : i + 1] for i in range(len(stream))]) == (expected, None)
    for cut in range(len(stream) + 1):
        assert parse_chunks([stream[:cut], stream[cut:]]) == (expected, None), cut


def test_empty_and_negative_counts_are_no_command_as_in_redis() -> None:
    assert parse(b"*0\r\n*-1\r\n" + pack(b"PING")) == [[b"PING"]]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"PING\r\n", [b"PING"]),
        (b"PING\n", [b"PING"]),
        (b"  set  key\tvalue  \r\n", [b"set", b"key", b"value"]),
        (b'SET k "a b"\r\n', [b"SET", b"k", b"a b"]),
        (b'SET k "\\x41\\n\\r\\t\\"\\\\"\r\n', [b"SET", b"k", b'A\n\r\t"\\']),
        (b"SET k 'it\\'s' ''\r\n", [b"SET", b"k", b"it's", b""]),
        (b'SET k ""\r\n', [b"SET", b"k", b""]),
        (b"GET a\x00b c\r\n", [b"GET", b"a"]),  # Redis reads the line as a C string
        (b"GET a\x0bb\r\n", [b"GET", b"a\x0bb"]),  # only space, tab, CR, LF end an unquoted word
        (b"GET \x0ba\r\n", [b"GET", b"a"]),  # but any isspace() separates words
    ],
)
def test_inline_commands_split_as_redis_splits_them(line: bytes, words: list[bytes]) -> None:
    assert parse(line) == [words]


def test_inline_commands_pipeline_like_redis_benchmark_ping_inline() -> None:
    assert parse(b"PING\r\n" * 16) == [[b"PING"]] * 16
    assert parse(b"PING\r\n" + pack(b"PING") + b"PING\r\n") == [[b"PING"]] * 3


def test_empty_lines_are_skipped() -> None:
    assert parse(b"\r\n\n   \r\n\t\nPING\r\n\r\n") == [[b"PING"]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*x\r\n", "Protocol error: invalid multibulk length"),
        (b"*+1\r\n", "Protocol error: invalid multibulk length"),
        (b"*01\r\n", "Protocol error: invalid multibulk length"),
        (b"* 1\r\n", "Protocol error: invalid multibulk length"),
        (b"*-0\r\n", "Protocol error: invalid multibulk length"),
        (b"*\r\n", "Protocol error: invalid multibulk length"),
        (b"*1\rX\r\n", "Protocol error: invalid multibulk length"),
        (b"*99999999999999999999\r\n", "Protocol error: invalid multibulk length"),
        (b"*-99999999999999999999\r\n", "Protocol error: invalid multibulk length"),
        (b"*1\r\n+PING\r\n", "Protocol error: expected '$', got '+'"),
        (b"*1\r\n*1\r\n$4\r\nPING\r\n", "Protocol error: expected '$', got '*'"),
        (b"*1\r\n\r\n", "Protocol error: expected '$', got '\\x0d'"),
        (b"*1\r\n$x\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$04\r\nPING\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$4\r\nPINGxx", "Protocol error: expected CRLF after bulk data"),
        (b"*1\r\n$4\r\nPING\n\n", "Protocol error: expected CRLF after bulk data"),
        (b"*" + b"1" * 40, "Protocol error: too big mbulk count string"),
        (b"*1\r\n$" + b"1" * 40, "Protocol error: too big bulk count string"),
        (b'GET "key\r\n', "Protocol error: unbalanced quotes in request"),
        (b"GET 'key\r\n", "Protocol error: unbalanced quotes in request"),
        (b'GET "a"b\r\n', "Protocol error: unbalanced quotes in request"),
        (b"GET 'a'b\r\n", "Protocol error: unbalanced quotes in request"),
        (b"GET " + b"k" * limits.resp_inline_bytes_max, "Protocol error: too big inline request"),
    ],
)
def test_malformed_input_is_a_protocol_error_worded_as_redis_words_it(data: bytes, message: str) -> None:
    assert parse_error(data) == message


def test_the_error_reply_is_redis_s_and_has_no_line_break() -> None:
    wire = encode(protocol_error_reply(ProtocolError("Protocol error: expected '$', got '\\x0d'")))
    assert wire == b"-ERR Protocol error: expected '$', got '\\x0d'\r\n"
    assert encode(protocol_error_reply(ProtocolError("a\r\nb"))) == b"-ERR a  b\r\n"


def test_commands_before_an_error_come_out_and_the_parser_stays_failed() -> None:
    parser = RespParser()
    parser.feed(pack(b"SET", b"k", b"v") + b"PING\r\n" + b"*1\r\n$x\r\n" + pack(b"GET", b"k"))
    assert parser.next_command() == [b"SET", b"k", b"v"]
    assert parser.next_command() == [b"PING"]
    for _ in range(2):
        with pytest.raises(ProtocolError, match="invalid bulk length"):
            parser.next_command()
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parser.feed(pack(b"PING"))


# --- limits --------------------------------------------------------------------------------------


def test_the_limits_fit_the_kv_service() -> None:
    assert limits.resp_bulk_bytes_max == limits.value_bytes_max
    assert limits.resp_command_args_max >= 1 + 2 * kv_args.mset_keys_max, "MSET k v k v ..."
    assert limits.resp_command_args_max >= 1 + kv_args.mget_keys_max


def test_a_bulk_string_at_the_value_limit_is_accepted_and_one_byte_more_refused_on_its_length() -> None:
    value = b"v" * limits.resp_bulk_bytes_max
    assert parse(pack(b"SET", b"k", value)) == [[b"SET", b"k", value]]
    # The header alone is refused: the body is never waited for.
    over = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (limits.resp_bulk_bytes_max + 1)
    assert parse_error(over) == "Protocol error: invalid bulk length"


def test_an_argument_count_over_the_limit_is_refused_on_its_count_line() -> None:
    at_limit = pack(*[b"k"] * limits.resp_command_args_max)
    assert parse(at_limit) == [[b"k"] * limits.resp_command_args_max]
    assert parse_error(b"*%d\r\n" % (limits.resp_command_args_max + 1)) == "Protocol error: invalid multibulk length"


def test_a_command_over_its_byte_limit_is_refused_on_the_header_that_crosses_it() -> None:
    small = {"command_bytes_max": 100}
    assert parse(pack(b"SET", b"k", b"v" * 60), **small)
    assert parse_error(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$90\r\n", **small) == "Protocol error: too big command"


def test_an_inline_line_at_the_limit_is_accepted_and_longer_refused_before_its_newline() -> None:
    word = b"k" * (limits.resp_inline_bytes_max - 4)
    assert parse(b"GET " + word + b"\n") == [[b"GET", word]]
    assert parse(b"GET " + word[1:] + b"\r\n") == [[b"GET", word[1:]]]
    assert parse_error(b"GET " + word + b"\r\n") == "Protocol error: too big inline request", "a CR counts"
    parser = RespParser()
    parser.feed(b"GET " + word)
    assert parser.next_command() is None
    parser.feed(b"x")
    with pytest.raises(ProtocolError, match="too big inline request"):
        parser.next_command()


def test_the_query_buffer_is_bounded() -> None:
    parser = RespParser(buffer_bytes_max=1000)
    parser.feed(b"*1\r\n$900\r\n" + b"x" * 900)
    with pytest.raises(ProtocolError, match="too big query buffer"):
        parser.feed(b"x" * 100)


@pytest.mark.parametrize(
    "declared",
    [
        b"*1\r\n$%d\r\n" % (limits.resp_bulk_bytes_max + 1),
        b"*1\r\n$9223372036854775807\r\n",
        b"*1\r\n$99999999999999999999999999999\r\n",
        b"*%d\r\n" % (limits.resp_command_args_max + 1),
        b"*2147483647\r\n",
        b"*9223372036854775807\r\n",
    ],
)
def test_a_huge_declared_length_with_no_body_allocates_nothing(declared: bytes) -> None:
    parser = RespParser()
    tracemalloc.start()
    try:
        parser.feed(declared)
        with pytest.raises(ProtocolError):
            parser.next_command()
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 64 * limits.KIB


def test_a_line_or_a_value_arriving_a_byte_at_a_time_is_not_rescanned_each_time() -> None:
    # Linear work: a 64 KiB inline line fed a byte at a time is joined once, not once per byte.
    parser = RespParser()
    line = b"GET " + b"k" * (limits.resp_inline_bytes_max - 8)
    for byte in range(len(line)):
        parser.feed(line[byte : byte + 1])
        assert parser.next_command() is None
    assert len(parser._buf) == 1, "joined once, when the first byte told an inline line"
    parser.feed(b"\r\n")
    assert parser.next_command() == line.split()
    # Likewise a value: once its length is known, its pieces are joined when it is all in.
    value = b"v" * limits.resp_bulk_bytes_max
    stream = pack(b"SET", b"k", value)
    parser.feed(stream[:30])
    assert parser.next_command() is None
    joined = len(parser._buf)
    for at in range(30, len(stream) - 1, 1000):
        parser.feed(stream[at : min(at + 1000, len(stream) - 1)])
        assert parser.next_command() is None
        assert len(parser._buf) == joined
    parser.feed(stream[-1:])
    assert parser.next_command() == [b"SET", b"k", value]


def test_lower_limits_may_be_set_per_connection_but_not_higher() -> None:
    assert parse_error(pack(b"AUTH", b"x" * 20), bulk_bytes_max=16) == "Protocol error: invalid bulk length"
    assert parse_error(pack(*[b"x"] * 11), command_args_max=10) == "Protocol error: invalid multibulk length"
    with pytest.raises(AssertionError):
        RespParser(bulk_bytes_max=limits.resp_bulk_bytes_max + 1)


# --- properties ----------------------------------------------------------------------------------

arguments = st.binary(max_size=40) | st.sampled_from([b"", b"\r\n", b"\r", b"\n", b"*1\r\n", b"$3\r\n", b'"', b"'"])
commands = st.lists(arguments, min_size=1, max_size=6)
# Inline words: what a user types, without quotes or blanks (those are tested above); a line
# starting with "*" is a multibulk command.
inline_words = st.lists(
    st.binary(min_size=1, max_size=8).filter(lambda w: w.split() == [w] and not resp._INLINE_SPECIAL.search(w)),
    min_size=1,
    max_size=4,
).filter(lambda words: not words[0].startswith(b"*"))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[list[bytes]]]:
    """A valid stream of multibulk and inline commands (with empty lines), and its commands."""
    parts: list[bytes] = []
    expected: list[list[bytes]] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["multibulk", "multibulk", "hiredis", "inline", "empty"]))
        if kind == "inline":
            words = draw(inline_words)
            parts.append(b" ".join(words) + draw(st.sampled_from([b"\r\n", b"\n"])))
            expected.append(words)
        elif kind == "empty":
            parts.append(draw(st.sampled_from([b"\r\n", b"*0\r\n", b"*-1\r\n", b" \n"])))
        else:
            args = draw(commands)
            parts.append(hiredis.pack_command(tuple(args)) if kind == "hiredis" else pack(*args))
            expected.append(args)
    return b"".join(parts), expected


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_round_trip_under_any_split(data: st.DataObject) -> None:
    stream, expected = data.draw(streams())
    chunks = data.draw(splits(stream))
    assert parse_chunks(chunks) == (expected, None)


@settings(max_examples=60, deadline=None)
@given(streams())
def test_every_truncation_of_a_valid_stream_is_need_more_not_an_error(case: tuple[bytes, list[list[bytes]]]) -> None:
    stream, expected = case
    for cut in range(len(stream) + 1):
        parser = RespParser()
        got, error = parse_chunks([stream[:cut]], parser)
        assert error is None, (cut, error)
        assert got == expected[: len(got)]
        # The rest completes the stream exactly.
        rest, error = parse_chunks([stream[cut:]], parser)
        assert (got + rest, error) == (expected, None)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_every_oversized_length_is_a_clean_error_before_its_body(data: st.DataObject) -> None:
    bulk_max = data.draw(st.integers(4, 64))  # PING fits
    args_max = data.draw(st.integers(1, 8))
    prefix = pack(b"PING")
    if data.draw(st.booleans()):
        size = data.draw(st.integers(bulk_max + 1, 2**63 - 1))
        stream = prefix + b"*%d\r\n" % args_max + b"$%d\r\n" % size
        message = "Protocol error: invalid bulk length"
    else:
        count = data.draw(st.integers(args_max + 1, 2**63 - 1))
        stream = prefix + b"*%d\r\n" % count
        message = "Protocol error: invalid multibulk length"
    chunks = data.draw(splits(stream))
    got = parse_chunks(chunks, RespParser(bulk_bytes_max=bulk_max, command_args_max=args_max))
    assert got == ([[b"PING"]], message)


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    stream = bytearray(draw(streams())[0])
    for _ in range(draw(st.integers(0, 4))):
        if not stream:
            break
        at = draw(st.integers(0, len(stream) - 1))
        stream[at] = draw(st.sampled_from([0, 10, 13, 32, 34, 36, 39, 42, 45, 48, 57, 92, 255]) | st.integers(0, 255))
    return bytes(stream)


@fuzz_settings
@given(st.data())
def test_fuzz_resp_parser(data: st.DataObject) -> None:
    """Any bytes: the parser only returns commands (lists of bytes) or raises ProtocolError, and
    the outcome does not depend on how the bytes were split."""
    stream = data.draw(st.binary(max_size=300) | mutated_streams())
    whole = parse_chunks([stream], RespParser(bulk_bytes_max=64, command_args_max=16, inline_bytes_max=64))
    for command in whole[0]:
        assert isinstance(command, list) and command and all(type(arg) is bytes for arg in command)
    chunks = data.draw(splits(stream))
    assert parse_chunks(chunks, RespParser(bulk_bytes_max=64, command_args_max=16, inline_bytes_max=64)) == whole


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_waiting_parser_has_no_command_and_no_error_due(data: st.DataObject) -> None:
    """``waiting`` lets the listener skip a call to ``next_command``: whenever it says so, under any
    split of a valid or a mutated stream and with the connection's limits, the call would have
    returned None."""
    stream = data.draw(mutated_streams() | streams().map(lambda case: case[0]))
    parser = RespParser(bulk_bytes_max=16, command_args_max=4)
    for chunk in data.draw(splits(stream)):
        try:
            parser.feed(chunk)
            while True:
                if parser.waiting:
                    assert parser.next_command() is None
                    break
                if parser.next_command() is None:
                    break
        except ProtocolError:
            break


class _BytewiseParser(RespParser):
    """The parser without its fast paths (one split of a batch on CRLF; a read that is one command)."""

    __slots__ = ()

    def _parse_whole_commands(self, pieces: list[bytes], index: int, pos: int) -> tuple[int, int]:
        return index, pos

    def _parse_alone(self, buf: bytes) -> list[bytes] | None:
        return None


@fuzz_settings
@given(mutated_streams() | streams().map(lambda case: case[0]))
def test_fuzz_the_fast_path_agrees_with_the_bytewise_parser(stream: bytes) -> None:
    small = {"bulk_bytes_max": 16, "command_args_max": 4}
    for limits_ in ({}, small):
        assert parse_chunks([stream], RespParser(**limits_)) == parse_chunks([stream], _BytewiseParser(**limits_))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(commands.map(lambda args: pack(*args)) | mutated_streams(), min_size=1, max_size=5),
    st.sampled_from([{}, {"command_args_max": 4}, {"bulk_bytes_max": 16, "command_args_max": 4}, {"command_bytes_max": 40}]),
)
def test_a_read_that_is_one_command_parses_as_through_the_bytewise_parser(reads: list[bytes], limits_: dict[str, int]) -> None:
    """The shortcut for a read that is one whole command (``_parse_alone``: a connection with one
    command in flight) gives the byte-wise parser's commands and errors, read after read, whatever
    the command and the connection's limits (a mutated stream is a read that may be anything)."""
    parser = _CountingAlone(**limits_)
    assert parse_chunks(reads, parser) == parse_chunks(reads, _BytewiseParser(**limits_))


def test_a_read_that_is_one_short_command_takes_the_shortcut() -> None:
    parser = _CountingAlone()
    reads = [pack(b"SET", b"key:1", b"v"), pack(b"GET", b"key:1"), pack(b"SET", b"a\r\nb", b"v"), pack(b"GET", b"x" * 5000)]
    assert parse_chunks(reads, parser) == ([[b"SET", b"key:1", b"v"], [b"GET", b"key:1"], [b"SET", b"a\r\nb", b"v"], [b"GET", b"x" * 5000]], None)
    assert parser.alone == 2  # (a CRLF inside an argument, and a long one, take the general path)
    # A read that ends with the start of the next command (no CRLF after it yet) is not one
    # command: those bytes stay for the next read.
    split = [pack(b"GET", b"k") + b"*2", b"\r\n$3\r\nGET\r\n$1\r\nj\r\n"]
    assert parse_chunks(split, _CountingAlone()) == ([[b"GET", b"k"], [b"GET", b"j"]], None)


class _CountingAlone(RespParser):
    """Counts the reads its one-command shortcut took."""

    __slots__ = ("alone",)

    def __init__(self, **limits_: int) -> None:
        super().__init__(**limits_)
        self.alone = 0

    def _parse_alone(self, buf: bytes) -> list[bytes] | None:
        args = super()._parse_alone(buf)
        self.alone += args is not None
        return args


class _CountingParser(RespParser):
    """Counts the commands its fast path takes."""

    __slots__ = ("fast_commands",)

    def __init__(self) -> None:
        super().__init__()
        self.fast_commands = 0

    def _parse_whole_commands(self, pieces: list[bytes], index: int, pos: int) -> tuple[int, int]:
        before = len(self._ready)
        index, pos = super()._parse_whole_commands(pieces, index, pos)
        self.fast_commands += len(self._ready) - before
        return index, pos


def test_the_fast_path_resumes_after_a_command_it_leaves_to_the_bytewise_parser() -> None:
    gets = pack(b"GET", b"k") * 100
    odd = [pack(b"SET", b"k", b"a\r\nb"), b"PING\r\n", b"PING\n", b"*0\r\n"]
    stream = gets + b"".join(odd[i % len(odd)] + gets for i in range(8))
    parser = _CountingParser()
    # Fed in reads that cut commands anywhere, as a socket does.
    commands, error = parse_chunks([stream[at : at + 1000] for at in range(0, len(stream), 1000)], parser)
    assert error is None and len(commands) == 900 + 6
    # Only a command cut by a read's end, the ones after an inline line ending in a bare LF (not
    # on a CRLF boundary), and the odd ones go byte by byte.
    assert parser.fast_commands >= 850


def test_split_inline_agrees_with_bytes_split_on_plain_words() -> None:
    assert split_inline(b"  a b\tc\rd  ") == [b"a", b"b", b"c", b"d"]
    assert split_inline(b"") == []


# --- replies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "resp2", "resp3"),
    [
        (OK, b"+OK\r\n", b"+OK\r\n"),
        (PONG, b"+PONG\r\n", b"+PONG\r\n"),
        (SimpleString("a\r\nb"), b"+a  b\r\n", b"+a  b\r\n"),
        (ErrorReply("unknown command 'x'"), b"-ERR unknown command 'x'\r\n", b"-ERR unknown command 'x'\r\n"),
        (WRONGTYPE, b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", None),
        (NOAUTH, b"-NOAUTH Authentication required.\r\n", None),
        (ErrorReply("User default has no permissions to run the 'set' command", "NOPERM"), b"-NOPERM User default has no permissions to run the 'set' command\r\n", None),
        (OOM, b"-OOM command not allowed when used memory > 'maxmemory'.\r\n", None),
        (0, b":0\r\n", None),
        (-2, b":-2\r\n", None),
        (1023, b":1023\r\n", None),
        (1024, b":1024\r\n", None),
        (-(2**63), b":-9223372036854775808\r\n", None),
        (b"", b"$0\r\n\r\n", None),
        (b"a\r\nb", b"$4\r\na\r\nb\r\n", None),
        ("é", b"$2\r\n\xc3\xa9\r\n", None),
        (None, b"$-1\r\n", b"_\r\n"),
        (NULL_ARRAY, b"*-1\r\n", b"_\r\n"),
        ([], b"*0\r\n", None),
        ([b"a", 1, None], b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n", b"*3\r\n$1\r\na\r\n:1\r\n_\r\n"),
        ((b"a", [b"b"]), b"*2\r\n$1\r\na\r\n*1\r\n$1\r\nb\r\n", None),
        ({b"proto": 3, b"role": b"master"}, b"*4\r\n$5\r\nproto\r\n:3\r\n$4\r\nrole\r\n$6\r\nmaster\r\n", b"%2\r\n$5\r\nproto\r\n:3\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"),
        (SetReply([b"a", b"b"]), b"*2\r\n$1\r\na\r\n$1\r\nb\r\n", b"~2\r\n$1\r\na\r\n$1\r\nb\r\n"),
        (Push([b"message", b"ch", b"hi"]), b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"),
        (1.5, b"$3\r\n1.5\r\n", b",1.5\r\n"),
        (2.0, b"$1\r\n2\r\n", b",2\r\n"),
        (float("inf"), b"$3\r\ninf\r\n", b",inf\r\n"),
        (float("-inf"), b"$4\r\n-inf\r\n", b",-inf\r\n"),
        (True, b":1\r\n", b"#t\r\n"),
        (False, b":0\r\n", b"#f\r\n"),
        (BigNumber(2**70), b"$22\r\n1180591620717411303424\r\n", b"(1180591620717411303424\r\n"),
        (Verbatim("# Server"), b"$8\r\n# Server\r\n", b"=12\r\ntxt:# Server\r\n"),
    ],
)
def test_replies_encode_as_redis_sends_them(reply: Any, resp2: bytes, resp3: bytes | None) -> None:
    assert encode(reply, 2) == resp2
    assert encode(reply, 3) == (resp2 if resp3 is None else resp3)
    assert encode(reply) == resp2, "RESP2 until HELLO 3"


def test_encode_many_is_the_replies_in_order() -> None:
    assert encode_many([OK, 1, b"v", None], 3) == b"+OK\r\n:1\r\n$1\r\nv\r\n_\r\n"


def test_an_integer_outside_int64_is_a_programmer_error() -> None:
    with pytest.raises(AssertionError):
        encode(2**63)
    with pytest.raises(AssertionError):
        encode([2**63])


# Reply trees, and what a client reads from each in RESP2 and RESP3.
scalars = (
    st.binary(max_size=20)
    | st.integers(-(2**63), 2**63 - 1)
    | st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.builds(SimpleString, st.text(st.characters(codec="ascii", exclude_characters="\r\n"), max_size=10))
)
replies = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.binary(max_size=8), inner, max_size=3)
    | st.builds(SetReply, st.lists(inner, max_size=3)),
    max_leaves=12,
)


def read2(reply: Any) -> Any:
    """What a RESP2 client reads back for a reply."""
    if isinstance(reply, SimpleString):
        return reply.text.encode()
    if isinstance(reply, bool):
        return int(reply)
    if isinstance(reply, float):
        return encode(reply, 2).split(b"\r\n")[1]
    if isinstance(reply, list):
        return [read2(item) for item in reply]
    if isinstance(reply, SetReply):
        return [read2(item) for item in reply.items]
    if isinstance(reply, dict):
        return [read2(x) for kv in reply.items() for x in kv]
    return reply


def read3(reply: Any) -> Any:
    """What a RESP3 client reads back (a set as a list, as redis-py's reader gives it)."""
    if isinstance(reply, SimpleString):
        return reply.text.encode()
    if isinstance(reply, (list, SetReply)):
        return [read3(item) for item in (reply.items if isinstance(reply, SetReply) else reply)]
    if isinstance(reply, dict):
        return {read3(k): read3(v) for k, v in reply.items()}
    return reply


class _Buffer:
    """The part of redis-py's SocketBuffer its RESP parsers use, over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def readline(self, timeout: Any = None) -> bytes:
        end = self.data.index(b"\r\n", self.pos)
        line, self.pos = self.data[self.pos : end], end + 2
        return line

    def read(self, length: int, timeout: Any = None) -> bytes:
        chunk, self.pos = self.data[self.pos : self.pos + length], self.pos + length + 2
        return chunk

    def get_pos(self) -> int:
        return self.pos

    def rewind(self, pos: int) -> None:
        self.pos = pos

    def purge(self) -> None:
        pass

    def close(self) -> None:
        pass


def redis_py_read(wire: bytes, protocol: int) -> Any:
    from redis import _parsers as parsers  # redis-py is a declared test extra (setup.cfg)

    parser = parsers._RESP3Parser(65536) if protocol == 3 else parsers._RESP2Parser(65536)
    parser._buffer = _Buffer(wire)
    if protocol == 3:
        value = parser.read_response(disable_decoding=True, push_request=True)
    else:
        value = parser.read_response(disable_decoding=True)
    assert parser._buffer.pos == len(wire), "the reply is read whole and nothing more"
    return value


def hiredis_read(wire: bytes) -> Any:
    reader = hiredis.Reader()
    reader.feed(wire)
    value = reader.gets()
    assert reader.gets() is False, "the reply is read whole and nothing more"
    return value


@settings(max_examples=200, deadline=None)
@given(replies)
def test_hiredis_reads_back_what_was_encoded(reply: Any) -> None:
    assert hiredis_read(encode(reply, 2)) == read2(reply)
    assert hiredis_read(encode(reply, 3)) == read3(reply)


@settings(max_examples=200, deadline=None)
@given(replies)
def test_redis_py_s_own_parsers_read_back_what_was_encoded(reply: Any) -> None:
    assert redis_py_read(encode(reply, 2), 2) == read2(reply)
    assert redis_py_read(encode(reply, 3), 3) == read3(reply)


def test_clients_read_errors_pushes_and_special_doubles() -> None:
    reader = hiredis.Reader()
    reader.feed(encode(WRONGTYPE, 3) + encode(Push([b"message", b"c", b"m"]), 3) + encode(float("nan"), 3))
    error = reader.gets()
    assert isinstance(error, hiredis.ReplyError) and str(error).startswith("WRONGTYPE ")
    assert reader.gets() == [b"message", b"c", b"m"]
    assert math.isnan(reader.gets())
    assert redis_py_read(encode(Push([b"message", b"c", b"m"]), 3), 3) == [b"message", b"c", b"m"]
    assert redis_py_read(encode(BigNumber(-(2**80)), 3), 3) == -(2**80)
    assert redis_py_read(encode(Verbatim(b"txt body"), 3), 3) == b"txt body"


def test_hiredis_pack_command_parses_back() -> None:
    args = (b"SET", b"k\r\n", b"", b"\x00" * 3)
    assert parse(hiredis.pack_command(args)) == [list(args)]
