"""The client-side commands (`trimaran status`, `trimaran kv ...`) against a fake cluster."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import trio
from click.testing import CliRunner

import trimaran
from tests.client.fake_server import FakeCluster, cluster_in_thread
from trimaran.cli import main
from trimaran.protocols.service import ApplyContext


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with cluster_in_thread(leader_id=2) as c:
        yield c


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_kv_set_get_del(cluster: FakeCluster) -> None:
    endpoints = ",".join(cluster.addresses())
    assert run("kv", "set", "greeting", "héllo", "--endpoints", endpoints) == (0, "OK\n", "")
    assert run("kv", "get", "greeting", "--endpoints", endpoints) == (0, "héllo\n", "")
    code, out, _ = run("kv", "get", "greeting", "--json", "--endpoints", endpoints)
    assert code == 0 and json.loads(out) == {
        "key": "greeting", "found": True, "value": "héllo", "revision": 1, "ttl_remaining_ms": None,
    }  # fmt: skip
    assert run("kv", "del", "greeting", "--endpoints", endpoints) == (0, "deleted\n", "")
    assert run("kv", "del", "greeting", "--endpoints", endpoints, "--json") == (
        0,
        '{"key": "greeting", "deleted": false}\n',
        "",
    )
    code, out, err = run("kv", "get", "greeting", "--endpoints", endpoints)
    assert (code, out) == (1, "") and err == "Error: key not found: greeting\n"
    # Issue 14: with --json, one JSON value on stdout and the documented status, nothing on stderr.
    code, out, err = run("kv", "get", "greeting", "--json", "--endpoints", endpoints)
    assert (code, json.loads(out), err) == (1, {"key": "greeting", "found": False, "value": None}, "")
    # The commands address the kv service; the register service is left alone.
    assert "greeting".encode() not in cluster.services["register"].data  # type: ignore[attr-defined]


def test_kv_set_reads_a_value_from_stdin_or_a_file(cluster: FakeCluster, tmp_path: Path) -> None:
    """Issue 14: values up to the 1 MiB limit cannot pass through a shell argument."""
    endpoints = ["--endpoints", ",".join(cluster.addresses())]
    big = bytes(range(256)) * 4096  # 1 MiB, not UTF-8
    result = CliRunner().invoke(main, ["kv", "set", "blob", "-", *endpoints], input=big, catch_exceptions=False)
    assert (result.exit_code, result.stdout) == (0, "OK\n")
    assert cluster.services["kv"].query(["get", b"blob"], ApplyContext(0, 0))[0] == big  # type: ignore[attr-defined]
    path = tmp_path / "value.bin"
    path.write_bytes(b"\x00from a file")
    assert run("kv", "set", "file", "--value-file", str(path), *endpoints)[0] == 0
    assert cluster.services["kv"].query(["get", b"file"], ApplyContext(0, 0))[0] == b"\x00from a file"  # type: ignore[attr-defined]
    too_big = CliRunner().invoke(main, ["kv", "set", "blob", "-", *endpoints], input=big + b"!")
    assert too_big.exit_code == 2 and "value_bytes_max" in too_big.stderr
    assert run("kv", "set", "k", *endpoints)[0] == 2  # neither VALUE nor --value-file
    assert run("kv", "set", "k", "v", "--value-file", str(path), *endpoints)[0] == 2


def test_kv_set_options_and_incr(cluster: FakeCluster) -> None:
    endpoints = ["--endpoints", ",".join(cluster.addresses())]
    code, out, _ = run("kv", "set", "lock", "me", "--if-absent", "--ttl-ms", "60000", "--json", *endpoints)
    revision = json.loads(out)["revision"]
    assert code == 0 and json.loads(out) == {"key": "lock", "ok": True, "revision": revision}
    code, _, err = run("kv", "set", "lock", "you", "--if-absent", *endpoints)
    assert code == 1 and err.startswith("Error: condition_failed: ") and err.count("\n") == 1
    assert run("kv", "set", "lock", "you", "--if-revision", str(revision + 5), *endpoints)[0] == 1
    assert run("kv", "set", "lock", "you", "--if-revision", str(revision), *endpoints)[0] == 0
    code, out, _ = run("kv", "get", "lock", "--json", *endpoints)
    assert json.loads(out)["value"] == "you" and json.loads(out)["ttl_remaining_ms"] is None
    assert run("kv", "del", "lock", "--if-revision", "1", *endpoints)[0] == 1
    assert run("kv", "incr", "hits", *endpoints) == (0, "1\n", "")
    assert run("kv", "incr", "hits", "--by", "-5", *endpoints) == (0, "-4\n", "")
    assert run("kv", "incr", "hits", "--by", "10", "--json", *endpoints) == (0, '{"key": "hits", "value": 6}\n', "")
    code, _, err = run("kv", "incr", "lock", *endpoints)
    assert code == 1 and err.startswith("Error: invalid_argument: ")


def test_kv_scan(cluster: FakeCluster) -> None:
    endpoints = ["--endpoints", ",".join(cluster.addresses())]
    for i in range(5):
        run("kv", "set", f"user:{i}", f"name {i}", *endpoints)
    run("kv", "set", "zzz", "other", *endpoints)
    code, out, _ = run("kv", "scan", "user:", *endpoints)
    assert code == 0 and out.splitlines() == [f"user:{i}\tname {i}" for i in range(5)]
    code, out, _ = run("kv", "scan", "user:", "--limit", "2", "--json", *endpoints)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [line["key"] for line in lines] == ["user:0", "user:1"]
    assert lines[0] == {"key": "user:0", "value": "name 0", "revision": lines[0]["revision"], "ttl_remaining_ms": None}
    assert len(run("kv", "scan", *endpoints)[1].splitlines()) == 6  # no prefix: every key
    assert run("kv", "scan", "nothing", *endpoints) == (0, "", "no keys starting with nothing\n")
    assert run("kv", "scan", "nothing", "--json", *endpoints) == (0, "", "")


def test_kv_watch_replays_and_follows(cluster: FakeCluster) -> None:
    endpoints = ["--endpoints", ",".join(cluster.addresses())]
    run("kv", "set", "job:1", "queued", *endpoints)
    run("kv", "set", "job:1", "done", *endpoints)
    run("kv", "del", "job:1", *endpoints)
    code, out, _ = run("kv", "watch", "job:", "--prefix", "--from-revision", "0", "--count", "3", *endpoints)
    assert code == 0 and out.splitlines() == ["1 put job:1 queued", "2 put job:1 done", "3 delete job:1 deleted"]
    code, out, _ = run("kv", "watch", "job:1", "--from-revision", "2", "--count", "1", "--json", *endpoints)
    assert json.loads(out) == {"revision": 3, "kind": "delete", "key": "job:1", "value": None, "reason": "deleted"}

    # From now on: writes made while the watch runs show up, earlier ones do not. (Written until
    # the watch is done: its "now" may be read before or after any one write.)
    done = threading.Event()

    def keep_writing() -> None:
        with trimaran.connect_sync(cluster.addresses()) as c:
            for i in range(500):
                if done.wait(0.02):
                    return
                c.kv.set("job:2", f"new{i}")

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        code, out, _ = run("kv", "watch", "job:", "--prefix", "--count", "2", *endpoints)
    finally:
        done.set()
        writer.join()
    lines = [line.split() for line in out.splitlines()]
    assert code == 0 and [line[1:3] for line in lines] == [["put", "job:2"]] * 2
    assert int(lines[0][0]) > 3 and int(lines[1][0]) == int(lines[0][0]) + 1


def test_endpoints_from_the_environment(cluster: FakeCluster) -> None:
    env = {"TRIMARAN_ENDPOINTS": cluster.nodes[1].address}  # a follower: the client is redirected
    assert run("kv", "set", "k", "v", env=env)[0] == 0
    assert run("kv", "get", "k", "--consistency", "stale", env=env) == (0, "v\n", "")


def test_errors_are_one_line_and_a_non_zero_exit(cluster: FakeCluster) -> None:
    endpoints = ",".join(cluster.addresses())
    code, out, err = run("kv", "set", "k" * 5000, "v", "--endpoints", endpoints)
    assert code == 1 and out == "" and err.startswith("Error: too_large: ") and err.count("\n") == 1
    # A usage mistake, not a runtime failure: exit status 2, as click gives its own.
    code, _, err = run("kv", "get", "k", "--endpoints", "nonsense")
    assert code == 2 and "Invalid value for '--endpoints': endpoint 'nonsense' is not HOST:PORT" in err


def test_status_table_and_json(cluster: FakeCluster) -> None:
    endpoints = ",".join(cluster.addresses())
    code, out, err = run("status", "--endpoints", endpoints)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("leader: 2   term: 3")
    assert lines[1].split() == ["NODE", "ADDRESS", "STATE", "TERM", "COMMIT", "APPLIED", "LAG"]
    assert [line.split()[2] for line in lines[2:5]] == ["follower", "leader", "follower"]
    code, out, _ = run("status", "--json", "--endpoints", endpoints)
    data = json.loads(out)
    assert code == 0 and data["leader_id"] == 2 and data["term"] == 3
    assert [n["node_id"] for n in data["nodes"]] == [1, 2, 3]
    assert all(n["up"] and n["lag_entries"] == 0 for n in data["nodes"])


def test_status_shows_a_silent_node_as_down(cluster: FakeCluster) -> None:
    # Node 3 crashed; the client only learned its address from node 1's member list.
    trio.from_thread.run_sync(cluster.nodes[3].stop, trio_token=cluster.trio_token)
    code, out, _ = run("status", "--json", "--timeout-ms", "500", "--endpoints", cluster.nodes[1].address)
    nodes = {n["node_id"]: n for n in json.loads(out)["nodes"]}
    assert code == 0 and set(nodes) == {1, 2, 3}
    assert nodes[3]["up"] is False and "unavailable" in nodes[3]["error"]
    assert nodes[3]["lag_entries"] == 7  # the leader's view of the node it cannot reach
    assert nodes[1]["up"] and nodes[2]["up"]


def test_status_with_a_refused_token_names_the_refusal_not_a_dead_cluster(cluster: FakeCluster) -> None:
    from trimaran.errors import Unauthenticated

    for node in cluster.nodes.values():
        node.refuse_hello = Unauthenticated("the token was revoked", reason="revoked")
    code, _, err = run("status", "--endpoints", ",".join(cluster.addresses()))
    assert code == 1 and "unauthenticated: the token was revoked" in err and "every node refused the token" in err, err
    assert "no leader" not in err


def test_status_with_no_node_answering_says_so_not_no_leader() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    code, out, err = run("status", "--endpoints", endpoint)
    assert code == 1 and endpoint in out and "down" in out
    assert err.endswith("Error: no node answered: is the cluster running at --endpoints (and, for a TLS cluster, given --ca-file)?\n"), err


def test_every_client_command_has_help() -> None:
    for args in (["status"], ["kv"], *(["kv", cmd] for cmd in ("get", "set", "del", "incr", "scan", "watch"))):
        code, out, _ = run(*args, "--help")
        assert code == 0 and "Usage:" in out


def test_every_command_and_option_has_help() -> None:
    """Issue 14: no option without a help text."""
    missing: list[str] = []

    def walk(command: click.Command, path: str) -> None:
        if not command.help:
            missing.append(path)
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")
            return
        missing.extend(f"{path} {p.opts[0]}" for p in command.params if isinstance(p, click.Option) and not p.help)

    walk(main, "trimaran")
    assert missing == []


def test_the_kv_groups_help_names_its_commands() -> None:
    """Issue 14: the group's summary line lists exactly the commands it has."""
    group = main.commands["kv"]
    assert isinstance(group, click.Group) and group.help is not None
    summary = group.help.splitlines()[0]
    named = set(re.findall(r"\b(\w+)\b", summary.split(":", 1)[1])) - {"and"}
    assert named == set(group.commands)


def test_unreachable_endpoints_fail_fast_naming_each_one() -> None:
    """Issue 14: refused endpoints cost one connect attempt each, not the whole timeout."""
    import socket
    import time

    ports = []
    for _ in range(2):
        with socket.socket() as s:  # a port nothing listens on: connecting is refused at once
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    endpoints = ",".join(f"127.0.0.1:{p}" for p in ports)
    started = time.monotonic()
    code, _, err = run("kv", "get", "k", "--endpoints", endpoints, "--timeout-ms", "20000")
    assert time.monotonic() - started < 5.0
    assert code == 1 and "no node answered" in err
    assert all(f"127.0.0.1:{p}" in err for p in ports)
