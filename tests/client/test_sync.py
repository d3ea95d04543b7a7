"""The blocking facade: same API, same errors, shared by threads, clean shutdown."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio

import trimaran
from tests.client.fake_server import FakeNode, cluster_in_thread
from trimaran import errors


def test_sync_round_trip_and_typed_errors() -> None:
    with cluster_in_thread() as cluster, trimaran.connect_sync(",".join(cluster.addresses())) as c:
        c.set("k", "v")
        assert c.get("k") == b"v"
        assert c.cas("k", "v", "w") is True
        assert c.incr("n", 2) == 2
        assert c.delete("n") is True
        assert c.read("register", ["get", b"k"], "stale") == b"w"
        assert c.command("register", ["set", b"x", b"y"]) is None
        assert c.status()["leader_id"] == 1
        assert c.node_status(cluster.nodes[2].address)["node_id"] == 2
        with pytest.raises(errors.InvalidArgument, match="not an integer"):
            c.incr("k")
        with pytest.raises(errors.TooLarge):
            c.set("k" * 5000, "v")
        assert c.leader_id == 1


def test_sync_client_is_shared_by_threads_on_one_connection() -> None:
    threads_count, per_thread = 8, 25
    with cluster_in_thread(size=1) as cluster, trimaran.connect_sync(cluster.addresses()) as c:
        failures: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for i in range(per_thread):
                    assert c.incr("counter") > 0
                    c.set(f"t{t}-{i}", str(i))
            except BaseException as exc:  # reported below; a thread must not swallow it
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert failures == []
        assert c.get("counter") == str(threads_count * per_thread).encode()
    assert cluster.nodes[1].connections_accepted == 1
    assert len(cluster.applied) == 2 * threads_count * per_thread


def test_sync_timeout_and_close() -> None:
    with cluster_in_thread(size=1) as cluster:

        async def hang(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
            return "hang" if op == "read" else None

        cluster.nodes[1].hooks.append(hang)
        c = trimaran.connect_sync(cluster.addresses(), timeout_ms=200)
        with c:
            with pytest.raises(errors.RequestTimeout):
                c.get("k")
            c.set("k", "v")
        with pytest.raises(errors.InvalidArgument, match="not open"):
            c.get("k")
        c.close()  # idempotent


def test_sync_bad_options_fail_in_the_callers_thread() -> None:
    with pytest.raises(errors.InvalidArgument):
        trimaran.connect_sync("not-an-endpoint")
    with pytest.raises(errors.InvalidArgument):
        trimaran.connect_sync("127.0.0.1:1", timeout_ms=0)


def test_sync_body_exception_propagates_and_thread_stops() -> None:
    with cluster_in_thread(size=1) as cluster:
        with pytest.raises(ZeroDivisionError):
            with trimaran.connect_sync(cluster.addresses()) as c:
                c.set("k", "v")
                1 / 0
        assert c._thread is not None and not c._thread.is_alive()


def test_readme_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    default = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    assert default in example and len(example.strip().splitlines()) <= 5
    with cluster_in_thread() as cluster:
        exec(example.replace(default, ",".join(cluster.addresses())), {})
    assert capsys.readouterr().out == "b'hello'\n"


async def test_the_blocking_client_has_the_members_methods(tmp_path: Any) -> None:
    """c.members on connect_sync: the same list and transfer as the async client (the README's
    "From Python" line for membership failed on a blocking client before)."""
    from tests.node.helpers import in_process_cluster

    async with in_process_cluster(tmp_path, tick_ms=10) as cluster:
        leader = await cluster.leader()
        endpoints = [str(cluster.client_address(n)) for n in (1, 2, 3)]

        def operate() -> tuple[list[Any], int]:
            with trimaran.connect_sync(endpoints, timeout_ms=10_000) as c:
                members = c.members.list()
                return members, c.members.transfer()

        members, target = await trio.to_thread.run_sync(operate)
        assert sorted(m.node_id for m in members) == [1, 2, 3]
        assert [m.node_id for m in members if m.role == "leader"] == [leader]
        assert target != leader and target in (1, 2, 3)
        await cluster.wait_for(lambda: cluster.status(target)["role"] == "leader", what="the transfer")
