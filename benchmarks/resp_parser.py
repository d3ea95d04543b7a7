"""RESP codec speed: parsing pipelined client commands, and encoding the common replies.

Parsing: ``--commands`` ``SET key:<n> <value>`` commands (3 arguments, ``--value-bytes`` each),
sent in pipelines of ``--pipeline`` commands; each pipeline is fed as one read (as the listener
gets it from the socket) and every command is taken out before the next. Compared:

- ``RespParser`` (pure Python, trimaran.protocols.resp): every limit checked before allocating,
  inline commands, Redis's error wording; again with the whole stream in 4 KiB reads, which cut
  commands anywhere;
- ``hiredis.Reader`` alone: the C reply reader, with no limit of ours (an upper bound: it cannot
  take inline commands, lets arrays nest, and would need a pre-scan of every length line to refuse
  an oversized one before its bytes are buffered);
- ``hiredis.Reader`` plus the least a server must check afterwards (a list of bytes, the argument
  count and sizes), still without the pre-scan.

For scale, the same commands through the native port's decoding (frames, msgpack with limits,
``parse_request``), which the RESP port is to match (issue 12: ≥ 0.9x its throughput).

Encoding: replies per second of ``encode`` for ``+OK``, a small integer, a 16-byte bulk string,
a null, and a pipeline of 16 replies through ``encode_many``.

Prints a table of medians over ``--runs`` runs (the hiredis rows are skipped if it is not
installed: ``pip install hiredis``; it is a test extra).

Why the parser stays pure Python although hiredis reads these commands 5-7x faster: hiredis's
reader cannot hold the limits before allocating. It builds a list of the declared size as soon as
it reads ``*<count>`` (``*1000000000\r\n`` alone raises the process's VmPeak by 7.8 GB; hiredis-py
has no setting for hiredis's ``maxelements``), reads nested arrays (a command is flat), refuses
inline commands, and a bulk string's length is seen only once its body is buffered. Holding the
limits in front of it takes a Python walk of every length line, which is what the pure parser
spends its time on (the split on CRLF that finds the arguments costs a tenth of it). And the pure
parser already costs a fraction of the native port's decoding of the same command.

    python benchmarks/resp_parser.py [--commands 100000] [--pipeline 16] [--value-bytes 16] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # the package, uninstalled too

from trimaran import limits  # noqa: E402
from trimaran.protocols.client_protocol import parse_request  # noqa: E402
from trimaran.protocols.codec import pack as msgpack_pack  # noqa: E402
from trimaran.protocols.codec import unpack  # noqa: E402
from trimaran.protocols.framing import FrameDecoder, encode_frame  # noqa: E402
from trimaran.protocols.resp import OK, RespParser, encode, encode_many  # noqa: E402

try:
    import hiredis
except ImportError:  # the table says so
    hiredis = None


def pack(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def pipelines(commands: int, pipeline: int, value_bytes: int) -> list[bytes]:
    value = b"v" * value_bytes
    packed = [pack(b"SET", b"key:%d" % n, value) for n in range(commands)]
    return [b"".join(packed[i : i + pipeline]) for i in range(0, commands, pipeline)]


def native_pipelines(commands: int, pipeline: int, value_bytes: int) -> list[bytes]:
    """The same commands as trimaran's native client frames them (for scale)."""
    value = b"v" * value_bytes
    frames = [
        encode_frame(
            msgpack_pack(
                [n, "command", {"client_id": 1, "seq": n + 1, "ack_seq": n, "service": "kv", "command": ["set", b"key:%d" % n, value]}]
            )
        )
        for n in range(commands)
    ]
    return [b"".join(frames[i : i + pipeline]) for i in range(0, commands, pipeline)]


def run_native(chunks: list[bytes]) -> int:
    decoder = FrameDecoder()
    count = 0
    for chunk in chunks:
        decoder.feed(chunk)
        while (frame := decoder.next_frame()) is not None:
            parse_request(unpack(frame))
            count += 1
    return count


def run_resp_parser(chunks: list[bytes]) -> int:
    parser = RespParser()
    count = 0
    for chunk in chunks:
        parser.feed(chunk)
        while parser.next_command() is not None:
            count += 1
    return count


def run_hiredis(chunks: list[bytes]) -> int:
    reader = hiredis.Reader()
    count = 0
    for chunk in chunks:
        reader.feed(chunk)
        while reader.gets() is not False:
            count += 1
    return count


def run_hiredis_checked(chunks: list[bytes]) -> int:
    reader = hiredis.Reader()
    args_max = limits.resp_command_args_max
    bulk_max = limits.resp_bulk_bytes_max
    count = 0
    for chunk in chunks:
        reader.feed(chunk)
        while (command := reader.gets()) is not False:
            if type(command) is not list or len(command) > args_max:
                raise ValueError("bad command")
            for arg in command:
                if type(arg) is not bytes or len(arg) > bulk_max:
                    raise ValueError("bad argument")
            count += 1
    return count


def timed(fn: Callable[[], Any], runs: int) -> float:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=100_000)
    ap.add_argument("--pipeline", type=int, default=16)
    ap.add_argument("--value-bytes", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    opts = ap.parse_args()

    chunks = pipelines(opts.commands, opts.pipeline, opts.value_bytes)
    wire_bytes = sum(map(len, chunks))
    parsers: list[tuple[str, Callable[[list[bytes]], int]]] = [("RespParser (pure Python)", run_resp_parser)]
    # The same bytes in 4 KiB reads that cut commands anywhere (a long pipeline from one socket).
    stream = b"".join(chunks)
    cut = [stream[at : at + 4096] for at in range(0, len(stream), 4096)]
    parsers.append(("RespParser, 4 KiB reads", lambda _: run_resp_parser(cut)))
    if hiredis is not None:
        parsers += [("hiredis.Reader, no checks", run_hiredis), ("hiredis.Reader + post-checks", run_hiredis_checked)]
    print(
        f"parse {opts.commands} x SET key value ({opts.value_bytes}-byte values, {wire_bytes} wire bytes) "
        f"in pipelines of {opts.pipeline}; median of {opts.runs} runs"
    )
    print(f"{'parser':34} {'commands/s':>12} {'us/command':>11} {'MB/s':>8}   speed vs RespParser")
    base = None
    for name, fn in parsers:
        assert fn(chunks) == opts.commands
        seconds = timed(lambda: fn(chunks), opts.runs)
        base = base or seconds
        print(
            f"{name:34} {opts.commands / seconds:12,.0f} {seconds / opts.commands * 1e6:11.2f} "
            f"{wire_bytes / seconds / 1e6:8.1f}   x{base / seconds:.2f}"
        )
    if hiredis is None:
        print("(hiredis not installed: pip install hiredis to compare)")
    native = native_pipelines(opts.commands, opts.pipeline, opts.value_bytes)
    assert run_native(native) == opts.commands
    seconds = timed(lambda: run_native(native), opts.runs)
    print(
        f"{'for scale: native port decode':34} {opts.commands / seconds:12,.0f} {seconds / opts.commands * 1e6:11.2f} "
        f"{sum(map(len, native)) / seconds / 1e6:8.1f}   x{base / seconds:.2f}"
    )

    n = opts.commands
    value = b"v" * 16
    sixteen = [OK, 1, value, None] * 4
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("encode(OK)", lambda: [encode(OK, 2) for _ in range(n)]),
        ("encode(1)", lambda: [encode(1, 2) for _ in range(n)]),
        ("encode(123456789)", lambda: [encode(123456789, 2) for _ in range(n)]),
        ("encode(16-byte bytes)", lambda: [encode(value, 2) for _ in range(n)]),
        ("encode(None, protocol=3)", lambda: [encode(None, 3) for _ in range(n)]),
        ("encode([bytes]*3)", lambda: [encode([value, value, value], 2) for _ in range(n)]),
        ("encode_many(16 replies) / 16", lambda: [encode_many(sixteen, 2) for _ in range(n // 16)]),
    ]
    print()
    print(f"encode: {n} replies, median of {opts.runs} runs")
    print(f"{'reply':34} {'replies/s':>12} {'ns/reply':>11}")
    for name, fn in cases:
        seconds = timed(fn, opts.runs)
        count = n if "many" not in name else (n // 16) * 16
        print(f"{name:34} {count / seconds:12,.0f} {seconds / count * 1e9:11.0f}")


if __name__ == "__main__":
    main()
