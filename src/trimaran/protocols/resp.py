r"""Sans-IO codec of RESP, the Redis protocol: client commands in, replies out (RESP2 and RESP3).

The node's RESP listener feeds the bytes it reads to a :class:`RespParser` and takes whole commands
out (h11 style: ``feed(data)``, then ``next_command()`` until it returns ``None``); it writes each
reply as ``encode(reply, protocol)``, with ``protocol`` 2 or 3 as the connection's ``HELLO`` chose.
No sockets, no clock: the same code serves the node and the tests.

Requests (what a Redis server accepts from a client, as Redis's ``processInputBuffer`` does)::

    command   = multibulk | inline
    multibulk = "*" count CRLF *( "$" length CRLF <length bytes> CRLF )   ; count bulk strings
    inline    = [words] [CR] LF        ; any line whose first byte is not "*": space-separated
                                       ; words, "double" and 'single' quotes as redis-cli's
    count     = "-"? digits            ; 0 or less: no command at all (skipped, as Redis does)

A multibulk command is an array of bulk strings only: nothing nests inside it (RESP3's other types
are for replies), so a client cannot make the parser recurse. Any number of commands may come in
one ``feed`` (pipelining) and a command may be split across feeds at any byte. An empty line is
skipped. Numbers are strict: no ``+``, no leading zero, no spaces.

The parser is pure Python. A pipeline's worth of commands is parsed at once from one split of the
buffer on CRLF (about a microsecond a command); anything unusual goes byte by byte. hiredis's
reader is faster but cannot hold these limits before allocating (``benchmarks/resp_parser.py``
measures both and says why).

Limits, each checked on the length line or on the bytes buffered, before anything of that size is
allocated (all in :mod:`trimaran.limits`): a bulk string is at most ``resp_bulk_bytes_max`` (the KV
value limit), a command has at most ``resp_command_args_max`` arguments and
``resp_command_bytes_max`` wire bytes, an inline line at most ``resp_inline_bytes_max`` bytes, a
length line at most ``resp_length_line_bytes_max``, and the parser holds at most
``resp_buffer_bytes_max`` unparsed bytes (the listener reads ``resp_receive_bytes_max`` at a time
and takes every complete command out before it reads again).

Malformed or oversized input raises :class:`~trimaran.errors.ProtocolError`, worded as Redis's
``networking.c`` words it, so a Redis user recognises it::

    Protocol error: invalid multibulk length      count not a number, or over the argument limit
    Protocol error: invalid bulk length           length not a number, negative, or over the limit
    Protocol error: expected '$', got 'x'         an argument that is not a bulk string (a byte
                                                  outside printable ASCII shown as \xNN)
    Protocol error: too big mbulk count string    no CRLF after "*" within a length line's bytes
    Protocol error: too big bulk count string     no CRLF after "$" within a length line's bytes
    Protocol error: too big inline request        no newline within resp_inline_bytes_max
    Protocol error: unbalanced quotes in request  an inline line with an open quote
    Protocol error: expected CRLF after bulk data (trimaran's own: Redis skips those two bytes)
    Protocol error: too big command               over resp_command_bytes_max (Redis has none)
    Protocol error: too big query buffer          over resp_buffer_bytes_max (Redis closes mutely)

After it the stream cannot be resynchronised: the parser stays failed (every later call raises the
same error) and the listener replies ``encode(protocol_error_reply(error))`` (``-ERR Protocol
error: ...``, as Redis does), after the replies to the commands parsed before it, then closes the
connection. Commands returned before the error are whole and valid.

Replies are a small value model, encoded by :func:`encode` for either protocol version::

    Python value               RESP3                        RESP2
    bytes (str: as UTF-8)      $3\r\nfoo\r\n                the same
    int (an int64)             :5\r\n                       the same
    None                       _\r\n                        $-1\r\n (the null bulk string)
    NULL_ARRAY                 _\r\n                        *-1\r\n
    list, tuple                *2\r\n...                    the same
    dict                       %1\r\n key value             *2\r\n key value (a flat array)
    SetReply                   ~2\r\n...                    an array
    Push (pub/sub messages)    >3\r\n...                    an array
    float                      ,1.5\r\n (,inf ,nan)         a bulk string: $3\r\n1.5\r\n
    bool                       #t\r\n, #f\r\n               :1\r\n, :0\r\n
    BigNumber                  (12345...\r\n                a bulk string
    Verbatim (INFO)            =8\r\ntxt:text\r\n           a bulk string of the text
    SimpleString               +OK\r\n                      the same
    ErrorReply                 -ERR message\r\n             the same (-WRONGTYPE, -NOAUTH, ...)

The common replies are cheap (``benchmarks/resp_parser.py`` measures them): a
:class:`SimpleString` or :class:`ErrorReply` holds its wire bytes from construction (:data:`OK`,
:data:`PONG`, :data:`WRONGTYPE`, ...), small integers and nulls are precomputed, and a short bulk
string's or array's header comes from a table.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Final, Iterable, Union

from trimaran import limits
from trimaran.errors import ProtocolError

CRLF: Final = b"\r\n"

# --- request parsing -----------------------------------------------------------------------------

#: Bytes that make an inline line take the slow, quote-aware split (sdssplitargs' rules) rather
#: than ``bytes.split``: quotes, and the bytes where the two disagree (C's NUL ends the line;
#: vertical tab and form feed separate words only between them, not inside one).
_INLINE_SPECIAL = re.compile(rb"[\"'\x00\x0b\x0c]")
#: C's isspace(): what separates words of an inline line.
_ISSPACE = frozenset(b" \t\n\r\x0b\x0c")
#: Ends an unquoted word (sdssplitargs).
_WORD_END = frozenset(b" \n\r\t\x00")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = frozenset(b"0123456789abcdefABCDEF")
#: Length lines of the fast path, precomputed: a dictionary look-up instead of parsing a number.
_COUNT_HEADERS: Final = {b"*%d" % n: n for n in range(1, 64)}
_BULK_HEADERS: Final = {n: b"$%d" % n for n in range(4 * limits.KIB)}
#: Argument bytes of a command whose every header is in these tables, at most.
_SHORT_COMMAND_ARG_BYTES_MAX: Final = max(_COUNT_HEADERS.values()) * max(_BULK_HEADERS)
assert _SHORT_COMMAND_ARG_BYTES_MAX <= limits.resp_bulk_bytes_max, "the tables' commands take the fast path"
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def _length(line: bytes) -> int | None:
    """The signed decimal of a length line, or None: Redis's ``string2ll`` (no ``+``, no leading
    zero, no space, int64)."""
    if line.isdigit():
        if line[0] == 48 and len(line) > 1:  # "0"
            return None
        value = int(line)
    elif line[:1] == b"-" and line[1:].isdigit() and line[1] != 48:
        value = -int(line[1:])
    else:
        return None
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _shown_byte(byte: int) -> str:
    """A byte in an error message: itself if printable ASCII, else ``\\xNN`` (never CR or LF)."""
    return chr(byte) if 32 <= byte < 127 else f"\\x{byte:02x}"


def split_inline(line: bytes) -> list[bytes] | None:
    """The words of one inline command line, or None if a quote is left open.

    Redis's ``sdssplitargs``: words are separated by whitespace; inside ``"..."`` the escapes
    ``\\n \\r \\t \\b \\a \\xHH`` and ``\\<any>`` apply; inside ``'...'`` only ``\\'``; a closing quote
    must be followed by whitespace or the end; a NUL byte ends the line (Redis reads it as a C
    string).
    """
    if _INLINE_SPECIAL.search(line) is None:
        return line.split()
    nul = line.find(b"\0")
    if nul >= 0:
        line = line[:nul]
    n = len(line)
    words: list[bytes] = []
    i = 0
    while True:
        while i < n and line[i] in _ISSPACE:
            i += 1
        if i >= n:
            return words
        word = bytearray()
        in_double = in_single = False
        while True:
            c = line[i] if i < n else 0
            after = line[i + 1] if i + 1 < n else 0
            if in_double:
                if (
                    c == 92  # backslash
                    and after == 120  # x
                    and i + 3 < n
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):
                    word.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and after:
                    i += 1
                    word.append(_ESCAPES.get(after, after))
                elif c == 34:  # closing "
                    if after and after not in _ISSPACE:
                        return None
                    i += 1
                    break
                elif not c:
                    return None
                else:
                    word.append(c)
            elif in_single:
                if c == 92 and after == 39:
                    i += 1
                    word.append(39)
                elif c == 39:  # closing '
                    if after and after not in _ISSPACE:
                        return None
                    i += 1
                    break
                elif not c:
                    return None
                else:
                    word.append(c)
            elif c in _WORD_END:
                if c:
                    i += 1
                break
            elif c == 34:
                in_double = True
            elif c == 39:
                in_single = True
            else:
                word.append(c)
            i += 1
        words.append(bytes(word))


class RespParser:
    """Client commands out of a RESP byte stream (h11 style, one per connection).

    ``feed(data)`` adds received bytes; ``next_command()`` returns the next whole command as a
    list of its arguments (``[b"SET", b"k", b"v"]``, the name as sent), or None until more bytes
    arrive. Both raise :class:`~trimaran.errors.ProtocolError` on malformed or oversized input,
    and keep raising it: close the connection (see the module docstring). An empty feed does
    nothing; at the end of the stream a partial command is simply dropped, as Redis drops it.

    The limits default to the hard ceilings of :mod:`trimaran.limits`; lower ones may be passed
    (the tests do). They are fixed for the connection: every whole command buffered is parsed at
    once, so Redis's tighter limits before AUTH (10 arguments, 16 KiB strings) are the listener's
    to apply to the commands it gets, within these ceilings.
    """

    __slots__ = (
        "bulk_bytes_max",
        "command_args_max",
        "command_bytes_max",
        "inline_bytes_max",
        "buffer_bytes_max",
        "_buf",
        "_pos",
        "_chunks",
        "_buffered",
        "_need_bytes",
        "_line_bytes_max",
        "_chunks_scanned",
        "_args",
        "_args_remaining",
        "_command_bytes",
        "_ready",
        "_ready_bytes",
        "_error",
        "_arg_bytes_max",
        "_short_ok",
    )

    def __init__(
        self,
        *,
        bulk_bytes_max: int = limits.resp_bulk_bytes_max,
        command_args_max: int = limits.resp_command_args_max,
        command_bytes_max: int = limits.resp_command_bytes_max,
        inline_bytes_max: int = limits.resp_inline_bytes_max,
        buffer_bytes_max: int = limits.resp_buffer_bytes_max,
    ) -> None:
        assert 0 <= bulk_bytes_max <= limits.resp_bulk_bytes_max
        assert 0 < command_args_max <= limits.resp_command_args_max
        assert 0 < command_bytes_max <= limits.resp_command_bytes_max
        assert 0 < inline_bytes_max <= limits.resp_inline_bytes_max
        assert 0 < buffer_bytes_max <= limits.resp_buffer_bytes_max
        self.bulk_bytes_max = bulk_bytes_max
        self.command_args_max = command_args_max
        self.command_bytes_max = command_bytes_max
        self.inline_bytes_max = inline_bytes_max
        self.buffer_bytes_max = buffer_bytes_max
        # Received bytes: ``_buf[_pos:]`` then ``_chunks`` (fed, not yet joined into ``_buf``).
        # Joining waits until parsing can progress, so a large argument arriving in many reads, or
        # a line arriving a byte at a time, is copied once rather than once per read.
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        #: Bytes from ``_pos`` on, ``_chunks`` included.
        self._buffered = 0
        #: Parsing cannot progress before this many bytes are buffered from ``_pos``.
        self._need_bytes = 0
        #: Waiting for the end of a line (a newline in a new chunk) at most this long; 0: not.
        self._line_bytes_max = 0
        #: Chunks already searched for a newline while waiting for one.
        self._chunks_scanned = 0
        # The multibulk command being read, once its count is in: arguments read so far, how many
        # are still to come, and its wire bytes read so far.
        self._args: list[bytes] | None = None
        self._args_remaining = 0
        self._command_bytes = 0
        # One bound for a whole command's arguments: it implies each is within bulk_bytes_max,
        # and with framing and the count line within command_bytes_max (the limits are fixed).
        self._arg_bytes_max = min(bulk_bytes_max, command_bytes_max - (command_args_max + 1) * limits.resp_arg_framing_bytes_max)
        # A command whose every header is in the fast path's tables is within these limits.
        self._short_ok = self._arg_bytes_max >= _SHORT_COMMAND_ARG_BYTES_MAX
        # Commands parsed and not yet returned, and their wire bytes (until all are returned).
        self._ready: deque[list[bytes]] = deque()
        self._ready_bytes = 0
        self._error: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet returned as commands."""
        return self._buffered + self._ready_bytes

    @property
    def waiting(self) -> bool:
        """:meth:`next_command` would return None without looking at a byte: no command or error
        is due and too few bytes are buffered for the next one (a caller may skip the call)."""
        return not self._ready and self._error is None and self._buffered < self._need_bytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the client (any amount, split anywhere)."""
        if self._error is not None:
            raise self._error
        size = len(data)
        if not size:
            return
        if self._buffered + self._ready_bytes + size > self.buffer_bytes_max:
            self._fail("Protocol error: too big query buffer", buffered_bytes=self._buffered + size)
        self._chunks.append(bytes(data))
        self._buffered += size

    def next_command(self) -> list[bytes] | None:
        """The next whole command's arguments, or None until more bytes are fed."""
        ready = self._ready
        if ready:
            first = ready.popleft()
            if not ready:
                self._ready_bytes = 0
            return first
        if self._error is not None:
            raise self._error
        if self._buffered < self._need_bytes:
            return None
        chunks = self._chunks
        if len(chunks) == 1 and self._pos >= len(self._buf) and self._args is None and not self._line_bytes_max:
            # One read that is one whole short command, with nothing before it (a connection
            # with one command in flight, the usual case): no join, no batch, no parking.
            alone = self._parse_alone(chunks[0])
            if alone is not None:
                self._chunks, self._buf = [], b""
                self._more(0, 1)  # every byte taken: as the general path parks after a whole batch
                return alone
        if self._line_bytes_max:
            # Waiting for a line's end: only a newline in a new chunk (or too many bytes) can help.
            for index in range(self._chunks_scanned, len(chunks)):
                if b"\n" in chunks[index]:
                    break
            else:
                self._chunks_scanned = len(chunks)
                if self._buffered < self._line_bytes_max:
                    return None
        if chunks:
            rest = self._buf[self._pos :] if self._pos < len(self._buf) else b""
            if rest:
                chunks.insert(0, rest)
            self._buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._pos = 0
            self._chunks = []
        self._line_bytes_max = 0
        self._chunks_scanned = 0
        self._need_bytes = 0
        unparsed_bytes = self._buffered
        # Every whole command now buffered is parsed at once (a pipeline's worth), so the fast
        # path can split the buffer once; an error is raised after the commands before it.
        try:
            self._parse_batch()
        except ProtocolError as error:
            self._error = error
        # (0 when the batch took bytes but made no command, e.g. empty lines: nothing is held)
        self._ready_bytes = unparsed_bytes - self._buffered if ready else 0
        if ready:
            first = ready.popleft()
            if not ready:
                self._ready_bytes = 0
            return first
        if self._error is not None:
            raise self._error
        return None

    def _parse_batch(self) -> None:
        """Every whole command buffered into ``_ready``: through the fast path where it can, else
        byte by byte (one command, after which the fast path resumes)."""
        ready = self._ready
        # The buffer split once on CRLF, and the piece that starts at byte ``piece_pos``.
        pieces: list[bytes] | None = None
        piece_index = piece_pos = 0
        while True:
            buf = self._buf
            pos = self._pos
            if self._args is None and pos < len(buf) and buf[pos] == 42:  # "*"
                if pieces is None:
                    pieces = (buf[pos:] if pos else buf).split(CRLF)
                    piece_pos = pos
                # Catch up with what the byte-wise parser took (each piece walked once in all).
                while piece_pos < pos and piece_index < len(pieces):
                    piece_pos += len(pieces[piece_index]) + 2
                    piece_index += 1
                if piece_pos == pos:  # else an inline line ended in a bare LF: not on a piece
                    piece_index, piece_pos = self._parse_whole_commands(pieces, piece_index, piece_pos)
                    if piece_pos == len(buf):  # every byte taken (the usual case): nothing to wait on
                        self._more(piece_pos, 1)
                        return
            parsed = self._parse()
            if parsed is None:
                return
            ready.append(parsed)

    def _parse_alone(self, buf: bytes) -> list[bytes] | None:
        """The arguments if ``buf`` is exactly one multibulk command that the fast path
        (:meth:`_parse_whole_commands`) would take as a short one (every header in its tables);
        else None, and nothing is taken."""
        if buf[:1] != b"*":
            return None
        count = _COUNT_HEADERS.get(buf[: buf.find(CRLF)])
        if count is None or not self._short_ok or count > self.command_args_max:
            return None
        # A pipeline's read (more line ends than one command has) is left whole to the general
        # path, which splits it once: splitting it here first cost a 16-command read 2.6 µs (15%),
        # counting first 1.2 µs, and a one-command read 0.3 µs more.
        if buf.count(CRLF) != 2 * count + 1:
            return None
        pieces = buf.split(CRLF)
        if pieces[-1]:
            return None
        args = pieces[2::2]
        if pieces[1:-1:2] != list(map(_BULK_HEADERS.get, map(len, args))):
            return None
        return args

    def _parse_whole_commands(self, pieces: list[bytes], index: int, pos: int) -> tuple[int, int]:
        """The fast path: whole multibulk commands from the pieces of the buffer split on CRLF,
        from ``pieces[index]``, which starts at byte ``pos``; the piece and byte after them.

        When no argument holds a CRLF, the pieces alternate ``$<length>`` and the argument, so
        a command is a slice of them, checked by comparing each header with the length of the
        piece after it. At the first command that is not so (an inline command, a CRLF inside an
        argument, a partial or malformed command) it stops and leaves that command to the
        byte-wise parser, which gives the exact error; the buffer is split once per batch, so a
        stream built to defeat the fast path costs one split more, not one per command.
        """
        start = index
        whole = len(pieces) - 1  # the last piece is not followed by CRLF (yet)
        ready = self._ready
        args_max = self.command_args_max
        # A command over this bound is left to the byte-wise parser, which knows the exact limits.
        arg_bytes_max = self._arg_bytes_max
        short_within_limits = self._short_ok
        header_of = _BULK_HEADERS.get
        while index < whole:
            head = pieces[index]
            count = _COUNT_HEADERS.get(head)
            # A command of few short arguments (every header in the tables) is within the limits,
            # unless this parser was given lower ones.
            short = count is not None and short_within_limits
            if count is None:
                if head[:1] != b"*":
                    break
                count = _length(head[1:])
                if count is None or count <= 0:
                    break
            if count > args_max:
                break
            last = index + 2 * count
            if last >= whole:
                break
            args = pieces[index + 2 : last + 1 : 2]
            headers = pieces[index + 1 : last : 2]
            if headers != list(map(header_of, map(len, args))):
                if headers != [b"$%d" % len(arg) for arg in args]:
                    break
                short = False
            if not short and sum(map(len, args)) > arg_bytes_max:
                break
            ready.append(args)
            index = last + 1
        if index > start:
            pos += sum(map(len, pieces[start:index])) + 2 * (index - start)
            self._pos = pos
            self._buffered = len(self._buf) - pos
        return index, pos

    def _fail(self, message: str, **details: Any) -> None:
        self._error = ProtocolError(message, **details)
        raise self._error

    def _more(self, pos: int, need_bytes: int, line_bytes_max: int = 0) -> None:
        """Park at ``pos`` until ``need_bytes`` are buffered from it (or a line ends)."""
        end = len(self._buf)
        if pos >= end:
            self._buf = b""
            self._pos = 0
        else:
            self._pos = pos
        self._buffered = end - pos
        self._need_bytes = need_bytes
        self._line_bytes_max = line_bytes_max

    def _parse(self) -> list[bytes] | None:
        buf = self._buf
        pos = self._pos
        end = len(buf)
        line_max = limits.resp_length_line_bytes_max
        args = self._args
        while args is None:
            if pos >= end:
                self._more(pos, 1)
                return None
            if buf[pos] != 42:  # not "*": an inline command
                nl = buf.find(b"\n", pos, pos + self.inline_bytes_max + 1)
                if nl < 0:
                    if end - pos > self.inline_bytes_max:
                        raise ProtocolError("Protocol error: too big inline request")
                    self._more(pos, end - pos + 1, self.inline_bytes_max + 1)
                    return None
                stop = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
                words = split_inline(buf[pos:stop])
                if words is None:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                pos = nl + 1
                if words:
                    self._more(pos, 0)
                    return words
                continue  # an empty line: no command
            nl = buf.find(CRLF, pos + 1, pos + line_max + 3)
            if nl < 0:
                if end >= pos + line_max + 3:
                    raise ProtocolError("Protocol error: too big mbulk count string")
                self._more(pos, end - pos + 1, line_max + 3)
                return None
            count = _length(buf[pos + 1 : nl])
            if count is None or count > self.command_args_max:
                raise ProtocolError("Protocol error: invalid multibulk length")
            self._command_bytes = nl + 2 - pos
            pos = nl + 2
            if count > 0:
                args = self._args = []
                self._args_remaining = count
        remaining = self._args_remaining
        command_bytes = self._command_bytes
        bulk_max = self.bulk_bytes_max
        while remaining:
            if pos >= end:
                self._more(pos, 1)
                self._args_remaining = remaining
                self._command_bytes = command_bytes
                return None
            if buf[pos] != 36:  # "$"
                raise ProtocolError(f"Protocol error: expected '$', got '{_shown_byte(buf[pos])}'")
            nl = buf.find(CRLF, pos + 1, pos + line_max + 3)
            if nl < 0:
                if end >= pos + line_max + 3:
                    raise ProtocolError("Protocol error: too big bulk count string")
                self._more(pos, end - pos + 1, line_max + 3)
                self._args_remaining = remaining
                self._command_bytes = command_bytes
                return None
            size = _length(buf[pos + 1 : nl])
            if size is None or size < 0 or size > bulk_max:
                raise ProtocolError("Protocol error: invalid bulk length")
            start = nl + 2
            stop = start + size
            if command_bytes + stop + 2 - pos > self.command_bytes_max:
                raise ProtocolError("Protocol error: too big command", command_bytes_max=self.command_bytes_max)
            if stop + 2 > end:
                self._more(pos, stop + 2 - pos)
                self._args_remaining = remaining
                self._command_bytes = command_bytes
                return None
            if buf[stop] != 13 or buf[stop + 1] != 10:
                raise ProtocolError("Protocol error: expected CRLF after bulk data")
            args.append(buf[start:stop])
            command_bytes += stop + 2 - pos
            pos = stop + 2
            remaining -= 1
        self._args = None
        self._args_remaining = 0
        self._command_bytes = 0
        self._more(pos, 0)
        return args


def protocol_error_reply(error: ProtocolError) -> ErrorReply:
    """The reply Redis sends before it closes a connection on a protocol error."""
    return ErrorReply(error.message)


# --- reply encoding ------------------------------------------------------------------------------


def _one_line(text: str) -> bytes:
    # A status or error line cannot hold CR or LF; Redis turns them into spaces too.
    return text.replace("\r", " ").replace("\n", " ").encode()


class SimpleString:
    """A status reply, ``+OK``: short text without CR or LF (they become spaces)."""

    __slots__ = ("text", "wire")

    def __init__(self, text: str) -> None:
        self.text = text
        self.wire = b"+" + _one_line(text) + CRLF

    def __repr__(self) -> str:
        return f"SimpleString({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SimpleString) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


class ErrorReply:
    """An error reply, ``-<CODE> <message>``: ``ErrorReply("syntax error")`` is ``-ERR syntax
    error``; ``code`` is the upper-case word clients dispatch on (``WRONGTYPE``, ``NOAUTH``,
    ``NOPERM``, ``OOM``, ...). A message that already starts with its code (an upper-case word)
    should pass that word as ``code`` and the rest as ``message``."""

    __slots__ = ("code", "message", "wire")

    def __init__(self, message: str, code: str = "ERR") -> None:
        assert code and code.isupper() and code.isascii() and " " not in code, code
        self.code = code
        self.message = message
        self.wire = b"-" + code.encode() + b" " + _one_line(message) + CRLF

    def __repr__(self) -> str:
        return f"ErrorReply({self.message!r}, {self.code!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ErrorReply) and (other.code, other.message) == (self.code, self.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))


class BigNumber:
    """RESP3 ``(`` big number (any size of integer); a bulk string of its decimal in RESP2."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


class Verbatim:
    """RESP3 ``=`` verbatim string (``INFO`` sends one); a bulk string of the text in RESP2.
    ``format`` is three letters: ``txt`` or ``mkd``."""

    __slots__ = ("text", "format")

    def __init__(self, text: bytes | str, format: str = "txt") -> None:
        assert len(format) == 3 and format.isascii() and ":" not in format, format
        self.text = text.encode() if isinstance(text, str) else text
        self.format = format


class SetReply:
    """RESP3 ``~`` set, in the order given (a Python set would make the order vary with hashing);
    an array in RESP2."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[Reply]) -> None:
        self.items = list(items)


class Push:
    """RESP3 ``>`` push (out-of-band data: pub/sub messages, ``["message", channel, payload]``);
    an array in RESP2, which has no other way to tell it from a reply."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[Reply]) -> None:
        self.items = list(items)


class _NullArray:
    """Redis's null array (``*-1`` in RESP2: ``BLPOP`` timing out, ``EXEC`` after a failed
    ``WATCH``); RESP3 has a single null."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL_ARRAY"


#: RESP2 ``*-1`` / RESP3 ``_``. (``None`` is the null bulk string, ``$-1`` in RESP2.)
NULL_ARRAY: Final = _NullArray()

Reply = Union[
    None,
    bool,
    int,
    float,
    bytes,
    str,
    "list[Reply]",
    "tuple[Reply, ...]",
    "dict[Any, Reply]",
    SimpleString,
    ErrorReply,
    BigNumber,
    Verbatim,
    SetReply,
    Push,
    _NullArray,
]

OK: Final = SimpleString("OK")
PONG: Final = SimpleString("PONG")
QUEUED: Final = SimpleString("QUEUED")
#: Redis's wording, where clients parse it.
WRONGTYPE: Final = ErrorReply("Operation against a key holding the wrong kind of value", "WRONGTYPE")
NOAUTH: Final = ErrorReply("Authentication required.", "NOAUTH")
OOM: Final = ErrorReply("command not allowed when used memory > 'maxmemory'.", "OOM")
NOT_AN_INTEGER: Final = ErrorReply("value is not an integer or out of range")
SYNTAX_ERROR: Final = ErrorReply("syntax error")

#: Replies precomputed for the fast path: the integers a listener sends most (counts, 0/1
#: answers, TTL's -2/-1) and bulk-string headers for short values.
_SMALL_INT_MIN = -2
_SMALL_INTS: Final = tuple(b":%d\r\n" % n for n in range(_SMALL_INT_MIN, 1024))
_NULL2: Final = b"$-1\r\n"
_NULL_ARRAY2: Final = b"*-1\r\n"
_NULL3: Final = b"_\r\n"
#: ``$<length>\r\n`` of short bulk strings and ``*<count>\r\n`` of short arrays.
_BULK_WIRE_HEADERS: Final = tuple(b"$%d\r\n" % n for n in range(4 * limits.KIB))
_ARRAY_WIRE_HEADERS: Final = tuple(b"*%d\r\n" % n for n in range(64))
_TRUE3: Final = b"#t\r\n"
_FALSE3: Final = b"#f\r\n"
#: Nesting of a reply (programmer-built, so an assert): far beyond any Redis reply.
_REPLY_DEPTH_MAX: Final = 64


def _double_text(value: float) -> bytes:
    # Redis (7.2+, fpconv) sends the shortest text that reads back the same, with no ".0" on an
    # integral value and "inf", "-inf", "nan" as such, as does Python's repr.
    text = repr(value)
    if text.endswith(".0"):
        text = text[:-2]
    return text.encode()


def encode(reply: Reply, protocol: int = 2) -> bytes:
    """The wire bytes of one reply for a connection speaking RESP ``protocol`` (2 or 3)."""
    # Exact type checks first: the replies a listener sends most, at the cost of one comparison.
    if type(reply) is bytes:
        size = len(reply)
        if size < len(_BULK_WIRE_HEADERS):
            return _BULK_WIRE_HEADERS[size] + reply + CRLF
        return b"$%d\r\n%b\r\n" % (size, reply)  # one copy of a large value, not two
    if type(reply) is SimpleString or type(reply) is ErrorReply:
        return reply.wire
    if type(reply) is int:
        if _SMALL_INT_MIN <= reply < 1024:
            return _SMALL_INTS[reply - _SMALL_INT_MIN]
        assert _INT64_MIN <= reply <= _INT64_MAX, "a RESP integer is an int64"
        return b":%d\r\n" % reply
    if reply is None:
        return _NULL3 if protocol == 3 else _NULL2
    assert protocol in (2, 3), protocol
    parts: list[bytes] = []
    _encode_into(parts, reply, protocol == 3, 0)
    return b"".join(parts)


def encode_many(replies: Iterable[Reply], protocol: int = 2) -> bytes:
    """The wire bytes of several replies in order (one write for a pipeline's answers)."""
    return b"".join([encode(reply, protocol) for reply in replies])


def _encode_into(out: list[bytes], reply: Reply, resp3: bool, depth: int) -> None:
    assert depth < _REPLY_DEPTH_MAX, "reply nested too deep"
    if isinstance(reply, bytes):
        out.append(b"$%d\r\n%b\r\n" % (len(reply), reply))
    elif isinstance(reply, (list, tuple)):
        count = len(reply)
        out.append(_ARRAY_WIRE_HEADERS[count] if count < len(_ARRAY_WIRE_HEADERS) else b"*%d\r\n" % count)
        for item in reply:
            # Inline, the elements of MGET, KEYS or SCAN replies: no call per element.
            if type(item) is bytes:
                size = len(item)
                out.append(_BULK_WIRE_HEADERS[size] if size < len(_BULK_WIRE_HEADERS) else b"$%d\r\n" % size)
                out.append(item)
                out.append(CRLF)
            elif item is None:
                out.append(_NULL3 if resp3 else _NULL2)
            else:
                _encode_into(out, item, resp3, depth + 1)
    elif isinstance(reply, str):
        data = reply.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    elif isinstance(reply, (SimpleString, ErrorReply)):
        out.append(reply.wire)
    elif isinstance(reply, bool):  # before int: bool is an int
        out.append((_TRUE3 if reply else _FALSE3) if resp3 else _SMALL_INTS[int(reply) - _SMALL_INT_MIN])
    elif isinstance(reply, int):
        assert _INT64_MIN <= reply <= _INT64_MAX, "a RESP integer is an int64"
        out.append(b":%d\r\n" % reply)
    elif reply is None:
        out.append(_NULL3 if resp3 else _NULL2)
    elif isinstance(reply, dict):
        out.append(b"%%%d\r\n" % len(reply) if resp3 else b"*%d\r\n" % (2 * len(reply)))
        for key, value in reply.items():
            _encode_into(out, key, resp3, depth + 1)
            _encode_into(out, value, resp3, depth + 1)
    elif isinstance(reply, float):
        text = _double_text(reply)
        out.append(b",%b\r\n" % text if resp3 else b"$%d\r\n%b\r\n" % (len(text), text))
    elif isinstance(reply, (SetReply, Push)):
        prefix = (b"~" if isinstance(reply, SetReply) else b">") if resp3 else b"*"
        out.append(b"%b%d\r\n" % (prefix, len(reply.items)))
        for item in reply.items:
            _encode_into(out, item, resp3, depth + 1)
    elif isinstance(reply, _NullArray):
        out.append(_NULL3 if resp3 else _NULL_ARRAY2)
    elif isinstance(reply, BigNumber):
        text = b"%d" % reply.value
        out.append(b"(%b\r\n" % text if resp3 else b"$%d\r\n%b\r\n" % (len(text), text))
    elif isinstance(reply, Verbatim):
        if resp3:
            out.append(b"=%d\r\n%b:%b\r\n" % (len(reply.text) + 4, reply.format.encode(), reply.text))
        else:
            out.append(b"$%d\r\n%b\r\n" % (len(reply.text), reply.text))
    else:
        raise AssertionError(f"not a RESP reply: {type(reply).__name__}")
