"""A call's deadline without a cancel scope per call: the connection's deadline watchdog times the
wait for an answer out, a cancel scope bounds only the slow path (discovery, backoff, a full
window). Each test runs on trio's MockClock (autojump), so times are exact."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trimaran
from tests.client.fake_server import HANG, FakeNode, start_cluster
from trimaran import errors
from trimaran.client import Client

#: Bounds every test in virtual time, so a broken deadline fails rather than hangs.
TEST_BOUND_S = 60


def _hang_reads_of(key: bytes) -> Any:
    async def hook(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        return HANG if op == "read" and body["query"] == ["get", key] else None

    return hook


async def test_unanswered_call_times_out_at_its_deadline_frees_its_slot_and_drops_the_late_answer(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    cluster = await start_cluster(nursery, size=1)
    release = trio.Event()

    async def late(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        if op == "read" and body["query"] == ["get", b"slow"]:
            await release.wait()
            return ("result", "LATE")
        return None

    cluster.nodes[1].hooks.append(late)
    with trio.fail_after(TEST_BOUND_S):
        async with trimaran.connect(cluster.addresses(), timeout_ms=2000, inflight_requests_max=4) as c:
            await c.kv.set("k", "v")
            conn = c._conn
            assert conn is not None
            start = trio.current_time()
            with pytest.raises(errors.RequestTimeout, match=r"^no answer within 2000 ms$|^no answer within 2000 ms \(last"):
                await c.read("kv", ["get", b"slow"])
            assert trio.current_time() - start == pytest.approx(2.0, abs=1e-6)
            assert conn.pending_count == 0 and conn._inflight.value == 4  # the slot is free again
            receives = conn._receives
            release.set()
            await trio.sleep(1)
            assert conn._receives > receives  # the late answer came ...
            assert await c.read("kv", ["get", b"k"]) != "LATE"  # ... and was dropped, not handed on
            entry = await c.kv.get("k")
            assert entry is not None and entry.value == b"v"
            assert conn.usable and c._conn is conn and cluster.nodes[1].connections_accepted == 1


async def test_a_command_timing_out_says_it_may_have_been_applied(nursery: trio.Nursery, autojump_clock: Any) -> None:
    cluster = await start_cluster(nursery, size=1)

    async def hang_commands(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        return HANG if op == "command" else None

    cluster.nodes[1].hooks.append(hang_commands)
    with trio.fail_after(TEST_BOUND_S):
        async with trimaran.connect(cluster.addresses(), timeout_ms=1500) as c:
            await c.kv.get("warm")  # a connection and nothing else: the command takes the fast path
            start = trio.current_time()
            with pytest.raises(errors.RequestTimeout, match="^no answer within 1500 ms; it may or may not have been applied"):
                await c.kv.set("k", "v")
            assert trio.current_time() - start == pytest.approx(1.5, abs=1e-6)


async def test_a_shorter_deadline_behind_a_longer_one_still_fires_on_time(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    cluster = await start_cluster(nursery, size=1)
    cluster.nodes[1].hooks.append(_hang_reads_of(b"h"))
    with trio.fail_after(TEST_BOUND_S):
        async with trimaran.connect(cluster.addresses()) as c:
            await c.kv.get("warm")
            outcomes: list[str] = []

            async def get(timeout_ms: int) -> None:
                try:
                    await c.kv.get("h", timeout_ms=timeout_ms)
                except errors.RequestTimeout:
                    outcomes.append(f"{timeout_ms} timed out at {trio.current_time() - start:.3f}")

            start = trio.current_time()
            async with trio.open_nursery() as callers:
                callers.start_soon(get, 5000)
                await trio.testing.wait_all_tasks_blocked()
                callers.start_soon(get, 100)  # earlier than the one the watchdog sleeps until
            assert outcomes == ["100 timed out at 0.100", "5000 timed out at 5.000"]
            assert c._conn is not None and c._conn.pending_count == 0


async def test_a_deadline_passing_during_backoff_ends_the_call_at_the_deadline(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    cluster = await start_cluster(nursery, size=1, leader_id=0)  # no leader: NotLeader, back off, again
    with trio.fail_after(TEST_BOUND_S):
        async with Client(cluster.addresses(), timeout_ms=1000, backoff_ms_min=400, backoff_ms_max=400) as c:
            for call in (lambda: c.kv.get("k"), lambda: c.kv.set("k", "v")):
                start = trio.current_time()
                with pytest.raises(errors.RequestTimeout, match=r"no answer within 1000 ms.*\(last: .*not_leader"):
                    await call()
                # Cut inside the third pause (0.8 -> 1.2 s), not at the next attempt after it.
                assert trio.current_time() - start == pytest.approx(1.0, abs=1e-6)


async def test_a_deadline_passing_while_waiting_for_an_inflight_slot(nursery: trio.Nursery, autojump_clock: Any) -> None:
    cluster = await start_cluster(nursery, size=1)
    cluster.nodes[1].hooks.append(_hang_reads_of(b"h"))
    with trio.fail_after(TEST_BOUND_S):
        async with trimaran.connect(cluster.addresses(), inflight_requests_max=1) as c:
            await c.kv.get("warm")
            conn = c._conn
            assert conn is not None
            async with trio.open_nursery() as callers:
                callers.start_soon(lambda: c.kv.get("h", timeout_ms=3000))
                await trio.testing.wait_all_tasks_blocked()
                start = trio.current_time()
                with pytest.raises(errors.RequestTimeout):
                    await c.kv.get("k", timeout_ms=200)  # the one slot is taken: waits for it, bounded
                assert trio.current_time() - start == pytest.approx(0.2, abs=1e-6)
                callers.cancel_scope.cancel()
            assert conn._inflight.value == 1 and conn.pending_count == 0
            assert await c.kv.get("k") is None


async def test_outside_cancellation_of_a_waiting_call(nursery: trio.Nursery, autojump_clock: Any) -> None:
    cluster = await start_cluster(nursery, size=1)
    cluster.nodes[1].hooks.append(_hang_reads_of(b"h"))
    with trio.fail_after(TEST_BOUND_S):
        async with trimaran.connect(cluster.addresses(), timeout_ms=2000, inflight_requests_max=2) as c:
            await c.kv.set("k", "v")
            conn = c._conn
            assert conn is not None
            seen: list[BaseException] = []

            async def waiting_get(task_status: Any) -> None:
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    try:
                        await c.kv.get("h")
                    except BaseException as exc:
                        seen.append(exc)
                        raise

            async with trio.open_nursery() as callers:
                scope = await callers.start(waiting_get)
                await trio.testing.wait_all_tasks_blocked()
                assert conn.pending_count == 1
                start = trio.current_time()
                scope.cancel()
            assert trio.current_time() == start  # at once, not at the deadline
            assert len(seen) == 1 and isinstance(seen[0], trio.Cancelled)
            assert conn.pending_count == 0 and conn._inflight.value == 2
            await trio.sleep(3)  # past the abandoned call's deadline: the watchdog just drops it
            assert conn._deadlines == [] and conn.usable
            entry = await c.kv.get("k")
            assert entry is not None and entry.value == b"v"


async def test_answered_calls_leave_no_deadlines_queued(nursery: trio.Nursery, autojump_clock: Any) -> None:
    cluster = await start_cluster(nursery, size=1)
    with trio.fail_after(TEST_BOUND_S):
        async with trimaran.connect(cluster.addresses()) as c:
            for i in range(50):
                await c.kv.set("k", str(i))
                assert await c.kv.get("k") is not None
            conn = c._conn
            assert conn is not None
            assert len(conn._deadlines) <= 1  # dropped as new ones come, not kept for 5 s each


async def test_the_common_path_enters_no_cancel_scope(
    nursery: trio.Nursery, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of the design: a call that finds its connection and gets its answer pays no scope
    (a scope with a deadline cost ~5 us of the client's ~24 us per get)."""
    cluster = await start_cluster(nursery, size=1)
    with trio.fail_after(TEST_BOUND_S):
        async with trimaran.connect(cluster.addresses()) as c:
            await c.kv.set("k", "v")  # connects and registers: the slow path, once
            scopes: list[float] = []
            real_move_on_at = trio.move_on_at

            def counting_move_on_at(deadline: float, *args: Any, **kwargs: Any) -> trio.CancelScope:
                scopes.append(deadline)
                return real_move_on_at(deadline, *args, **kwargs)

            monkeypatch.setattr(trio, "move_on_at", counting_move_on_at)
            monkeypatch.setattr(trio, "move_on_after", lambda *a, **k: pytest.fail("move_on_after on the common path"))
            for i in range(20):
                await c.kv.set("k", str(i))
                assert await c.kv.get("k") is not None
            assert scopes == []
            monkeypatch.undo()
            cluster.leader_id = 0  # now every attempt is refused: retries pay a scope, and are bounded
            with pytest.raises(errors.RequestTimeout):
                await c.kv.get("k", timeout_ms=300)
