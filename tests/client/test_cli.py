"""The client-side commands (`trimaran status`, `trimaran kv ...`) against a fake cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio
from click.testing import CliRunner

from tests.client.fake_server import FakeCluster, cluster_in_thread
from trimaran.cli import main


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
    assert code == 0 and json.loads(out) == {"key": "greeting", "found": True, "value": "héllo"}
    assert run("kv", "del", "greeting", "--endpoints", endpoints) == (0, "deleted\n", "")
    assert run("kv", "del", "greeting", "--endpoints", endpoints, "--json") == (
        0,
        '{"key": "greeting", "deleted": false}\n',
        "",
    )
    code, out, err = run("kv", "get", "greeting", "--endpoints", endpoints)
    assert (code, out) == (1, "") and err == "Error: key not found: greeting\n"


def test_endpoints_from_the_environment(cluster: FakeCluster) -> None:
    env = {"TRIMARAN_ENDPOINTS": cluster.nodes[1].address}  # a follower: the client is redirected
    assert run("kv", "set", "k", "v", env=env)[0] == 0
    assert run("kv", "get", "k", "--consistency", "stale", env=env) == (0, "v\n", "")


def test_errors_are_one_line_and_a_non_zero_exit(cluster: FakeCluster) -> None:
    endpoints = ",".join(cluster.addresses())
    code, out, err = run("kv", "set", "k" * 5000, "v", "--endpoints", endpoints)
    assert code == 1 and out == "" and err.startswith("Error: too_large: ") and err.count("\n") == 1
    code, _, err = run("kv", "get", "k", "--endpoints", "nonsense")
    assert code == 1 and err.startswith("Error: invalid_argument: ") and err.count("\n") == 1


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


def test_every_client_command_has_help() -> None:
    for args in (["status"], ["kv"], ["kv", "get"], ["kv", "set"], ["kv", "del"]):
        code, out, _ = run(*args, "--help")
        assert code == 0 and "Usage:" in out
