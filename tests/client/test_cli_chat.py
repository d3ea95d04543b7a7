"""``trimaran chat publish|history|presence|subscribe`` against an in-process cluster with an
HTTP edge (the CLI runs in a worker thread: each command makes its own trio run)."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from click.testing import CliRunner

from tests.node.helpers import HOST, in_process_cluster
from trimaran.cli import main
from trimaran.node.config import Address

TIMEOUT_S = 30


async def cli(*args: str) -> tuple[int, str]:
    def run() -> tuple[int, str]:
        result = CliRunner().invoke(main, list(args))
        return result.exit_code, result.output

    return await trio.to_thread.run_sync(run)


async def test_chat_commands(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0)) as cluster:
        with trio.fail_after(TIMEOUT_S):
            await cluster.leader(timeout_s=TIMEOUT_S)
            endpoints = ",".join(str(cluster.client_address(i)) for i in (1, 2, 3))
            code, out = await cli("chat", "publish", "room", "hello", "--endpoints", endpoints)
            assert code == 0 and out.split()[0] == "1", out
            epoch = out.split()[1]
            code, out = await cli("chat", "publish", "room", "world", "--json", "--endpoints", endpoints)
            assert code == 0 and json.loads(out) == {"offset": 2, "epoch": epoch}
            code, out = await cli("chat", "history", "room", "--since", "0", "--endpoints", endpoints)
            assert code == 0 and out.splitlines() == ["1 hello", "2 world"]
            code, out = await cli("chat", "subscribe", "room", "--since", "1", "--count", "1", "--json", "--endpoints", endpoints)
            assert code == 0, out
            event = json.loads(out.splitlines()[-1])
            assert event["kind"] == "message" and event["offset"] == 2 and event["data"] == "world"
            code, out = await cli("chat", "presence", "room", "--endpoints", endpoints)
            assert code == 0 and out == ""
            code, out = await cli("chat", "publish", "bad name", "x", "--endpoints", endpoints)
            assert code == 1 and "invalid_argument" in out
