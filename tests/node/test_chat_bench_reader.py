"""The chat benchmark's subscriber workers (``benchmarks/chat.py``: the C reader it builds, and the
Python fallback) count a delivery only when its offset is the next one: a gap, a duplicate or an
out-of-order push is an error and the row cannot reach ``subs x total``. Each worker is run
against a scripted gateway on a loopback socket (one WebSocket connection, the frames given)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHANNEL = "bench.t"
COMPACT = (",", ":")  # the gateway's JSON


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chat_bench", ROOT / "benchmarks" / "chat.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench()


def message(offset: int, data: str = "1.5") -> str:
    """A push in the gateway's exact form (the workers' fast path)."""
    return json.dumps(
        {"type": "message", "channel": CHANNEL, "offset": offset, "epoch": "e-1", "data": data, "at_ms": 7}, separators=COMPACT
    )


SUBSCRIBED = json.dumps({"id": 1, "type": "subscribed", "channel": CHANNEL, "epoch": "e-1", "top": 0, "oldest": 1, "recovered": True}, separators=COMPACT)


def frame(text: str) -> bytes:
    payload = text.encode()
    n = len(payload)
    head = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + n.to_bytes(2, "big")
    return head + payload


def serve_once(listener: socket.socket, frames: list[str], seen: dict[str, Any], piece_bytes: int | None = None) -> None:
    """Accept one WebSocket upgrade, read the client's subscribe, send ``frames`` (in pieces of
    ``piece_bytes``, each its own segment, if given), close."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        first = conn.recv(4096)  # the subscribe (one small masked frame)
        n, mask = first[1] & 0x7F, first[2:6]
        seen["subscribe"] = json.loads(bytes(b ^ mask[i % 4] for i, b in enumerate(first[6 : 6 + n])))
        data = b"".join(frame(text) for text in frames)
        if piece_bytes is None:
            conn.sendall(data)
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(data), piece_bytes):
            conn.sendall(data[start : start + piece_bytes])
            time.sleep(0.001)  # (so the reader gets them in separate reads, frames cut anywhere)


def run_worker(reader: Path | None, frames: list[str], total: int, piece_bytes: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What one worker process with one subscriber reports after the scripted gateway's ``frames``."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        seen: dict[str, Any] = {}
        server = threading.Thread(target=serve_once, args=(listener, frames, seen, piece_bytes), daemon=True)
        server.start()
        command = BENCH.worker_command(reader, CHANNEL, total, 20, [listener.getsockname()[1]])
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        server.join(timeout=10)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, (done.returncode, done.stdout[-500:], done.stderr[-500:])
    return json.loads(lines[-1]), seen


@pytest.fixture(scope="module")
def c_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        # .ci/run installs gcc: in CI a missing compiler is a failure, not a skip.
        assert not os.environ.get("CI"), "no C compiler in CI: .ci/run should have installed gcc"
        pytest.skip("no C compiler: the benchmark runs its Python worker (tested below)")
    built = BENCH.c_reader(tmp_path_factory.mktemp("reader") / "chat_reader")
    assert built is not None, "cc is here but the C reader did not build"
    return Path(built)


READY = json.dumps({"type": "ready", "node_id": 1}, separators=COMPACT)
EPOCH = json.dumps({"type": "epoch", "channel": CHANNEL, "epoch": "e-1"}, separators=COMPACT)


@pytest.fixture(params=["c", "python"])
def reader(request: pytest.FixtureRequest) -> Path | None:
    return request.getfixturevalue("c_reader") if request.param == "c" else None


def test_in_order_deliveries_all_count(reader: Path | None) -> None:
    frames = [READY, SUBSCRIBED + "\n" + EPOCH, "\n".join(message(o) for o in (1, 2, 3)), message(4), "\n".join(message(o) for o in (5, 6))]
    result, seen = run_worker(reader, frames, total=6)
    assert seen["subscribe"] == {"id": 1, "type": "subscribe", "channel": CHANNEL}
    assert result["errors"] == []
    assert result["delivered"] == 6
    assert len(result["latencies"]) == 6


def test_frames_cut_across_reads_are_put_together(reader: Path | None) -> None:
    long_frame = "\n".join(message(o) for o in range(2, 40))  # over 125 bytes: a 16-bit length
    result, _ = run_worker(reader, [READY, SUBSCRIBED, message(1), long_frame, message(40)], total=40, piece_bytes=61)
    assert result["errors"] == []
    assert result["delivered"] == 40


@pytest.mark.parametrize(
    ("offsets", "error"),
    [((1, 2, 4, 5), "offset 4 where 3 was due"), ((1, 2, 2, 3), "offset 2 where 3 was due"), ((2, 1), "offset 2 where 1 was due")],
    ids=["gap", "duplicate", "out-of-order"],
)
def test_a_wrong_offset_is_an_error_and_not_counted(reader: Path | None, offsets: tuple[int, ...], error: str) -> None:
    frames = [READY, SUBSCRIBED, "\n".join(message(o) for o in offsets)]
    result, _ = run_worker(reader, frames, total=len(offsets))
    assert error in result["errors"]
    assert result["delivered"] < len(offsets)  # so the row's rate is 0: delivered != subs x total


def test_the_c_reader_refuses_a_push_it_cannot_read(c_reader: Path) -> None:
    """Only the gateway's exact form is read as a message; any other line fails the row rather
    than being counted (here: a key the gateway does not send, and a message of another channel)."""
    odd = message(2)[:-1] + ',"extra":1}'
    other = message(3).replace(CHANNEL, "bench.other")
    result, _ = run_worker(c_reader, [READY, SUBSCRIBED, message(1), odd, other], total=3)
    assert result["delivered"] == 1
    assert [e.split(":")[0] for e in result["errors"]][:2] == ["a push this reader does not know"] * 2
