"""Structured logs (issue 13): one event per line, text or JSON, with the node, its term and the
event's own fields; the Raft events an operator searches for are written where they happen."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.node.helpers import RawClient, in_process_cluster
from trimaran.node import logs
from trimaran.node.logs import JsonFormatter, TextFormatter, configure_logging, event, set_term_source

TIMEOUT_S = 20


def _record(name: str, msg: str, *args: Any, **fields: Any) -> logging.LogRecord:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("trimaran.test.logs")
    keep = Keep()
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        event(logger, logging.INFO, name, msg, *args, **fields)
    finally:
        logger.removeHandler(keep)
    (record,) = records
    return record


def test_json_lines_carry_node_term_event_and_fields() -> None:
    term = 7
    source = lambda: term  # noqa: E731
    set_term_source(source)
    try:
        line = JsonFormatter(3).format(_record("leader_elected", "node %d leads term %d", 2, 7, leader=2))
    finally:
        set_term_source(None, only_if=source)
    out = json.loads(line)
    assert "\n" not in line
    assert {k: out[k] for k in ("level", "node", "term", "logger", "event", "msg", "leader")} == {
        "level": "info", "node": 3, "term": 7, "logger": "trimaran.test.logs", "event": "leader_elected",
        "msg": "node 2 leads term 7", "leader": 2,
    }  # fmt: skip
    assert out["ts"].endswith("Z") and out["ts"][10] == "T"


def test_text_lines_append_the_fields_and_omit_an_unknown_term() -> None:
    line = TextFormatter(1).format(_record("membership", "members changed", voters=[1, 2, 4], learners=[], why="a b"))
    assert " node1 INFO trimaran.test.logs: members changed [event=membership voters=1,2,4 learners=" in line
    assert line.endswith('why="a b"]') and "term=" not in line
    # A term source that fails (a node half torn down) leaves the term out instead of failing the line.
    broken = lambda: 1 // 0  # noqa: E731
    set_term_source(broken)
    try:
        assert "term=" not in TextFormatter(1).format(_record("x", "y"))
    finally:
        set_term_source(None, only_if=broken)


def test_configure_logging_refuses_an_unknown_format_and_replaces_its_handler() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("info", 1, "xml")
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        # Someone else's handler (pytest's here): left alone, as logging.basicConfig would.
        assert saved
        configure_logging("debug", 1, "json")
        assert root.handlers == saved and root.level == level
        for h in saved:
            root.removeHandler(h)
        configure_logging("warning", 1, "text")
        configure_logging("info", 1, "json")  # again: its own handler replaced
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonFormatter) and root.level == logging.INFO
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)


async def test_a_cluster_logs_its_leader_membership_and_snapshot_events(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trimaran")
    async with in_process_cluster(tmp_path, tick_ms=10, snapshot_interval_entries=20) as cluster:
        with trio.fail_after(TIMEOUT_S):
            leader = await cluster.leader()
            client = await RawClient.connect(cluster.client_address(leader))
            await client.call("membership", {"kind": "add_learner", "node_id": 9})  # never started
            await client.register()
            for i in range(30):  # past snapshot_interval_entries: every node takes a snapshot
                body = client.command_body(["set", b"k%d" % i, b"v"])
                body["service"] = "kv"
                await client.call("command", body)
            await client.aclose()

    def events(name: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, logs._EVENT, None) == name]

    elected = events("leader_elected")
    assert {getattr(r, logs._FIELDS)["leader"] for r in elected} == {leader}
    assert len(elected) == 3  # each node saw the one leader once
    assert events("election"), "the winner stood for election"
    changed = events("membership")
    assert len(changed) == 3 and all(getattr(r, logs._FIELDS)["learners"] == [9] for r in changed)
    taken = events("snapshot_taken")
    assert taken and all(getattr(r, logs._FIELDS)["bytes"] > 0 for r in taken)
    # No line per successful request at info.
    assert not [r for r in caplog.records if "k29" in r.getMessage()]
    # Each line names where it was written, not the logs module.
    assert {r.module for r in elected} == {"driver"}
