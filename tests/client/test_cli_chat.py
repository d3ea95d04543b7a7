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
    code, out, err = await cli_streams(*args)
    return code, out + err


async def cli_streams(*args: str) -> tuple[int, str, str]:
    def run() -> tuple[int, str, str]:
        result = CliRunner().invoke(main, list(args))
        return result.exit_code, result.stdout, result.stderr

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
            # Nothing to list is said on stderr (stdout stays empty for scripts), in text mode only.
            assert await cli_streams("chat", "presence", "room", "--endpoints", endpoints) == (0, "", "no one present on room\n")
            assert await cli_streams("chat", "presence", "room", "--json", "--endpoints", endpoints) == (0, "", "")
            assert await cli_streams("chat", "history", "empty", "--endpoints", endpoints) == (0, "", "no messages on empty\n")
            code, out = await cli("chat", "publish", "bad name", "x", "--endpoints", endpoints)
            assert code == 1 and "invalid_argument" in out
