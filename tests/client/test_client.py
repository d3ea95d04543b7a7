"""The trio client against a fake cluster on loopback: API, pipelining, redirects, retries that
keep exactly-once, typed errors and deadlines."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing

import trimaran
from tests.client.fake_server import DROP, DROP_AFTER_APPLY, HANG, IDLE_CLOSE, FakeNode, start_cluster
from trimaran import errors
from trimaran.client import Client


async def test_register_api_round_trip(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery)
    async with trimaran.connect(cluster.addresses()) as c:
        assert await c.get("missing") is None
        await c.set("k", "v")
        assert await c.get("k") == b"v"
        await c.set(b"bin", b"\x00\xff")
        assert await c.get(b"bin", consistency="stale") == b"\x00\xff"
        assert await c.cas("k", "v", "w") is True
        assert await c.cas("k", "nope", "x") is False
        assert await c.cas("fresh", None, "1") is True
        assert await c.incr("n") == 1
        assert await c.incr("n", 41) == 42
        assert await c.delete("n") is True
        assert await c.delete("n") is False
        assert await c.command("register", ["set", b"raw", b"1"]) is None
        assert await c.read("register", ["get", b"raw"], "lease") == b"1"
        status = await c.status()
        assert status["node_id"] == 1 and status["leader_id"] == 1
    # One session, commands numbered 1, 2, 3 ... with ack_seq trailing the answered prefix.
    commands = [call.body for call in cluster.calls if call.op == "command"]
    assert [b["seq"] for b in commands] == list(range(1, len(commands) + 1))
    assert [b["ack_seq"] for b in commands] == list(range(0, len(commands)))
    assert len({b["client_id"] for b in commands}) == 1
    assert sum(call.op == "register" for call in cluster.calls) == 1


async def test_handshake_carries_cluster_id_and_token_slot(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, size=1)
    async with trimaran.connect(cluster.addresses(), cluster_id="fake-cluster", token="t0k3n") as c:
        await c.set("a", "b")
    hello = cluster.nodes[1].hellos[0]
    assert hello == {"type": "hello", "version": 1, "cluster_id": "fake-cluster", "token": "t0k3n"}


async def test_wrong_cluster_id_is_refused_not_retried(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, size=1)
    async with trimaran.connect(cluster.addresses(), cluster_id="another") as c:
        with pytest.raises(errors.AuthError, match="another"):
            await c.set("a", "b")
    assert cluster.nodes[1].connections_accepted == 1


async def test_refused_handshake_raises_the_nodes_typed_error(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, size=1)
    cluster.nodes[1].refuse_hello = errors.AuthError("bad token")
    async with trimaran.connect(cluster.addresses()) as c:
        with pytest.raises(errors.AuthError, match="bad token"):
            await c.get("a")


async def test_many_callers_pipeline_on_one_connection_answered_out_of_order(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, size=1)
    callers = 50

    async def reverse_order(node: FakeNode, op: str, body: dict[str, Any]) -> None:
        if op == "command" and body["command"][0] == "set":
            # Later commands answer first: the client must match answers by request id.
            await trio.sleep(0.001 * (callers - body["command"][2][0]))

    cluster.nodes[1].hooks.append(reverse_order)
    results: dict[int, int] = {}
    async with trimaran.connect(cluster.addresses()) as c:
        await c.incr("warm-up")  # registers the session first

        async def one(i: int) -> None:
            await c.set(f"k{i}", bytes([i]))
            results[i] = (await c.get(f"k{i}"))[0]  # type: ignore[index]

        async with trio.open_nursery() as callers_nursery:
            for i in range(callers):
                callers_nursery.start_soon(one, i)
    assert results == {i: i for i in range(callers)}
    assert cluster.nodes[1].connections_accepted == 1
    assert cluster.nodes[1].inflight_max_seen >= callers // 2  # really pipelined, not one at a time


async def test_inflight_requests_are_bounded_per_connection(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, size=1)

    async def slow(node: FakeNode, op: str, body: dict[str, Any]) -> None:
        await trio.sleep(0.01)

    cluster.nodes[1].hooks.append(slow)
    async with trimaran.connect(cluster.addresses(), inflight_requests_max=4) as c:
        async with trio.open_nursery() as callers:
            for i in range(20):
                callers.start_soon(c.get, f"k{i}")
    assert cluster.nodes[1].inflight_max_seen == 4


async def test_not_leader_hint_redirects_to_a_known_node(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, leader_id=2)
    # Seed with the followers first: the welcome names node 2, whose address we do not know yet.
    endpoints = [cluster.nodes[1].address, cluster.nodes[3].address, cluster.nodes[2].address]
    async with trimaran.connect(endpoints) as c:
        await c.set("k", "v")
        assert await c.get("k") == b"v"
        assert c.leader_id == 2
    applied_on = {call.node_id for call in cluster.calls if call.op == "command"}
    assert applied_on == {2}


async def test_not_leader_with_leader_address_reaches_an_unlisted_leader(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, leader_id=3)
    cluster.nodes[1].send_leader_address = True
    async with trimaran.connect([cluster.nodes[1].address]) as c:  # only a follower is known
        await c.set("k", "v")
        assert c.node_addresses[3].port == cluster.nodes[3].port
    assert [call.node_id for call in cluster.calls if call.op == "command"] == [3]


async def test_leader_change_mid_run_is_followed(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, leader_id=1)
    async with trimaran.connect(cluster.addresses()) as c:
        await c.set("a", "1")
        cluster.leader_id = 3  # node 1 now refuses with not_leader(3)
        await c.set("b", "2")
        assert await c.get("a") == b"1"
    assert [call.node_id for call in cluster.calls if call.op == "command"][-1] == 3


async def test_no_leader_yet_backs_off_until_one_is_elected(nursery: trio.Nursery, autojump_clock: Any) -> None:
    cluster = await start_cluster(nursery, leader_id=0)  # an election in progress

    async def elect_later() -> None:
        await trio.sleep(0.5)
        cluster.leader_id = 2

    nursery.start_soon(elect_later)
    async with trimaran.connect(cluster.addresses()) as c:
        await c.set("k", "v")
    assert cluster.applied == [(cluster.next_client_id, 1, ["set", b"k", b"v"])]


async def test_connection_dropped_after_apply_retries_with_the_same_seq(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery)
    dropped: list[int] = []

    async def drop_first_incr(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        if op == "command" and body["command"][0] == "incr" and not dropped:
            dropped.append(body["seq"])
            return DROP_AFTER_APPLY
        return None

    cluster.nodes[1].hooks.append(drop_first_incr)
    async with trimaran.connect(cluster.addresses()) as c:
        assert await c.incr("n", 5) == 5  # the saved answer of the first, applied, attempt
        assert await c.get("n") == b"5"
    incr_calls = [call.body for call in cluster.calls if call.op == "command"]
    assert [b["seq"] for b in incr_calls] == [1, 1]
    assert len(cluster.applied) == 1  # exactly once
    assert cluster.nodes[1].connections_accepted == 2


async def test_dead_leader_fails_over_to_the_new_one(nursery: trio.Nursery, autojump_clock: Any) -> None:
    cluster = await start_cluster(nursery)
    async with trimaran.connect(cluster.addresses()) as c:
        await c.set("a", "1")

        async def crash(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
            node.stop()
            cluster.leader_id = 2
            return DROP_AFTER_APPLY

        cluster.nodes[1].hooks.append(crash)
        assert await c.incr("n") == 1
        assert c.leader_id == 2
    incr_seqs = [(call.node_id, call.body["seq"]) for call in cluster.calls if call.op == "command"][1:]
    assert incr_seqs == [(1, 2), (2, 2)]
    assert [a[2][0] for a in cluster.applied] == ["set", "incr"]


async def test_session_expired_before_anything_applied_re_registers_transparently(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery)
    async with trimaran.connect(cluster.addresses()) as c:
        await c.set("a", "1")
        first_client = cluster.next_client_id
        cluster.expire_sessions()
        await c.set("b", "2")
    assert cluster.next_client_id == first_client + 1
    last = [call.body for call in cluster.calls if call.op == "command"][-1]
    assert (last["client_id"], last["seq"], last["ack_seq"]) == (first_client + 1, 1, 0)


async def test_session_expired_when_outcome_unknown_is_indeterminate(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery)
    state = {"dropped": False}

    async def drop_then_expire(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        if op == "command" and body["command"][0] == "incr":
            if not state["dropped"]:
                state["dropped"] = True
                return DROP_AFTER_APPLY  # applied, answer lost ...
            cluster.expire_sessions()  # ... and the session forgotten before the retry
        return None

    cluster.nodes[1].hooks.append(drop_then_expire)
    async with trimaran.connect(cluster.addresses()) as c:
        await c.set("warm", "up")
        with pytest.raises(errors.SessionExpired) as info:
            await c.incr("n")
        assert info.value.details["indeterminate"] is True
        # The client carries on under a new session; the incr was applied exactly once.
        assert await c.get("n") == b"1"
        await c.set("after", "x")
    assert sum(1 for a in cluster.applied if a[2][0] == "incr") == 1


async def test_node_timeout_reply_is_retried_with_the_same_seq(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery)
    seen: list[int] = []

    async def timeout_once(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        if op == "command":
            seen.append(body["seq"])
            if len(seen) == 1:
                cluster.command(body)  # applied, but the node's own deadline passed
                return errors.RequestTimeout("commit took too long")
        return None

    cluster.nodes[1].hooks.append(timeout_once)
    async with trimaran.connect(cluster.addresses(), backoff_ms_min=1, backoff_ms_max=2) as c:
        assert await c.incr("n") == 1
    assert seen == [1, 1] and len(cluster.applied) == 1


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.InvalidArgument("bad"), errors.InvalidArgument),
        (errors.TooLarge("big"), errors.TooLarge),
        (errors.ConditionFailed("no"), errors.ConditionFailed),
        (errors.OutOfMemory("full"), errors.OutOfMemory),
        (errors.PermissionDenied("nope"), errors.PermissionDenied),
        (errors.Unauthenticated("who"), errors.Unauthenticated),
        (errors.TrimaranError("internal"), errors.TrimaranError),
    ],
)
async def test_error_codes_become_typed_exceptions(
    nursery: trio.Nursery, error: errors.TrimaranError, expected: type[errors.TrimaranError]
) -> None:
    cluster = await start_cluster(nursery, size=1)

    async def refuse(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        return error if op in ("command", "read") else None

    cluster.nodes[1].hooks.append(refuse)
    async with trimaran.connect(cluster.addresses()) as c:
        with pytest.raises(expected) as info:
            await c.set("k", "v")
        assert type(info.value) is expected and info.value.message == error.message
        with pytest.raises(expected):
            await c.get("k")


async def test_service_error_from_the_real_register_service(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, size=1)
    async with trimaran.connect(cluster.addresses()) as c:
        await c.set("word", "hello")
        with pytest.raises(errors.InvalidArgument, match="not an integer"):
            await c.incr("word")


async def test_bad_arguments_fail_before_sending(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, size=1)
    async with trimaran.connect(cluster.addresses()) as c:
        with pytest.raises(errors.TooLarge):
            await c.set("k" * 5000, "v")
        with pytest.raises(errors.TooLarge):
            await c.set("k", b"v" * (1024 * 1024 + 1))
        with pytest.raises(errors.InvalidArgument):
            await c.set("", "v")
        with pytest.raises(errors.InvalidArgument):
            await c.set("k", 3)  # type: ignore[arg-type]
        with pytest.raises(errors.InvalidArgument):
            await c.get("k", consistency="eventual")
        with pytest.raises(errors.InvalidArgument):
            await c.incr("k", 1 << 64)
        with pytest.raises(errors.TooLarge):  # the generic call is bounded too
            await c.command("register", ["set", b"k", b"x" * (2 * 1024 * 1024)])
    assert [call.op for call in cluster.calls] == ["register"]  # the session, never the command


async def test_unanswered_request_times_out(nursery: trio.Nursery, autojump_clock: Any) -> None:
    cluster = await start_cluster(nursery, size=1)

    async def hang(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        return HANG if op == "read" else None

    cluster.nodes[1].hooks.append(hang)
    async with trimaran.connect(cluster.addresses(), timeout_ms=2000) as c:
        start = trio.current_time()
        with pytest.raises(errors.RequestTimeout):
            await c.get("k")
        assert trio.current_time() - start == pytest.approx(2.0)
        with pytest.raises(errors.RequestTimeout):
            await c.get("k", timeout_ms=10)
        await c.set("still", "works")  # the connection is intact


async def test_unreachable_cluster_times_out_naming_the_cause(autojump_clock: Any) -> None:
    with trio.socket.socket() as sock:  # a port with nobody listening
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with trimaran.connect(f"127.0.0.1:{port}", timeout_ms=1000) as c:
        with pytest.raises(errors.RequestTimeout, match="connect to 127.0.0.1"):
            await c.get("k")


async def test_dropped_connection_retries_reads(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, size=1)
    drops: list[int] = []

    async def drop_twice(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        if op == "read" and len(drops) < 2:
            drops.append(1)
            return DROP
        return None

    cluster.nodes[1].hooks.append(drop_twice)
    async with trimaran.connect(cluster.addresses(), backoff_ms_min=1, backoff_ms_max=2) as c:
        assert await c.get("k") is None
    assert cluster.nodes[1].connections_accepted == 3


async def test_body_exception_propagates_unwrapped(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, size=1)
    with pytest.raises(KeyError):
        async with trimaran.connect(cluster.addresses()) as c:
            await c.set("k", "v")
            raise KeyError("mine")


async def test_client_outside_async_with_is_a_clear_error() -> None:
    c = Client("127.0.0.1:1")
    with pytest.raises(errors.InvalidArgument, match="async with"):
        await c.get("k")


def test_endpoints_parsing() -> None:
    from trimaran.client import Address, parse_endpoints

    assert parse_endpoints("a:1, b:2,a:1") == [Address("a", 1), Address("b", 2)]
    assert parse_endpoints(["[::1]:7001"]) == [Address("::1", 7001)]
    assert str(Address("::1", 7001)) == "[::1]:7001"
    for bad in ("", "nohost", "h:0", "h:99999", ":7"):
        with pytest.raises(errors.InvalidArgument):
            parse_endpoints(bad)


async def test_a_node_that_stops_reading_closes_the_connection(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Callers that time out leave their frames queued; a full queue means the node is stuck."""
    cluster = await start_cluster(nursery, size=1)
    async with trimaran.connect(cluster.addresses(), inflight_requests_max=2, timeout_ms=1000) as c:
        await c.set("k", "v")
        conn = c._conn
        assert conn is not None
        stream: Any = conn._stream
        stream.send_all = lambda data: trio.sleep_forever()  # a node whose socket never drains
        conn._sock = None  # no direct writes either: every frame goes through that send
        for _ in range(3):  # one frame stuck in the send, two filling the queue
            with pytest.raises(errors.RequestTimeout):
                await c.get("k")
        assert conn.usable
        assert await c.get("k") == b"v"  # finds the queue full, drops the connection, reconnects
        assert not conn.usable and "not reading" in (conn._closed_reason or "")
    assert cluster.nodes[1].connections_accepted == 2


async def test_a_frame_the_socket_takes_only_in_part_is_finished_in_order(nursery: trio.Nursery) -> None:
    """A lone request is written straight to the socket; what a full socket buffer refuses is
    finished by the writer task, before any frame queued after it."""
    cluster = await start_cluster(nursery, size=1)
    async with trimaran.connect(cluster.addresses()) as c:
        await c.set("k", "v")
        conn = c._conn
        assert conn is not None
        conn._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # type: ignore[attr-defined]
        big = bytes(range(256)) * 4096  # 1 MiB: far more than the socket buffer takes at once
        async with trio.open_nursery() as callers:
            callers.start_soon(c.set, "big", big)
            await trio.testing.wait_all_tasks_blocked()
            assert conn._writing  # the writer task is finishing the rest ...
            callers.start_soon(c.set, "small", "s")  # ... and this frame queues behind it
        assert await c.get("big") == big and await c.get("small") == b"s"
        assert conn.usable


async def test_cancelled_caller_does_not_disturb_others(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, size=1)

    async def slow_reads(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        if op == "read":
            await trio.sleep(0.05)
        return None

    cluster.nodes[1].hooks.append(slow_reads)
    async with trimaran.connect(cluster.addresses()) as c:
        await c.set("k", "v")
        with trio.move_on_after(0.01):
            await c.get("k")
        assert await c.get("k") == b"v"  # its late answer is dropped, not handed to this call
        await c.set("k2", "v2")
    assert cluster.nodes[1].connections_accepted == 1


async def test_session_window_holds_back_commands_behind_a_slow_one(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, size=1)
    release = trio.Event()

    async def hold_seq_1(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        if op == "command" and body["seq"] == 1:
            await release.wait()
        return None

    cluster.nodes[1].hooks.append(hold_seq_1)
    async with trimaran.connect(cluster.addresses(), inflight_requests_max=4) as c:  # window 8
        async with trio.open_nursery() as callers:
            for i in range(12):
                callers.start_soon(c.set, f"k{i}", "v")
            await trio.testing.wait_all_tasks_blocked()
            sent = [call.body["seq"] for call in cluster.calls if call.op == "command"]
            assert max(sent) == 8  # seq 9.. wait for ack_seq to pass 1
            release.set()
    acks = [call.body["ack_seq"] for call in cluster.calls if call.op == "command"]
    assert max(acks) >= 8


async def test_an_idle_close_resends_waiting_requests_at_once_even_those_sent_only_once(nursery: trio.Nursery) -> None:
    """A node that closes a connection as idle read nothing after its ``idle_timeout`` frame: the
    client reconnects to the same node and resends, even a ``transfer`` (never resent once it may
    have arrived), and it does not back off or forget the leader."""
    cluster = await start_cluster(nursery)
    closed: list[str] = []

    async def idle_close_first(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        if op in ("transfer", "command") and op not in closed:
            closed.append(op)
            return IDLE_CLOSE
        return None

    async with trimaran.connect(cluster.addresses()) as c:
        await c.set("a", "1")
        cluster.nodes[1].hooks.append(idle_close_first)
        await c.transfer(2)
        assert await c.incr("n") == 1
        assert c.leader_id == 1
    assert closed == ["transfer", "command"]
    assert [call.node_id for call in cluster.calls if call.op in ("transfer", "command")] == [1, 1, 1, 1, 1]
    assert [a[2][0] for a in cluster.applied] == ["set", "incr"]  # each once
    assert cluster.nodes[1].connections_accepted == 3
    assert cluster.nodes[2].connections_accepted == cluster.nodes[3].connections_accepted == 0


async def test_a_silent_node_costs_one_attempt_not_the_whole_call(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """The leader stops answering (as under SIGSTOP: its kernel still takes the bytes): after
    ``attempt_timeout_ms`` of silence the client tries another node, which leads by then."""
    cluster = await start_cluster(nursery)
    async with trimaran.connect(cluster.addresses(), timeout_ms=5_000, attempt_timeout_ms=1_000) as c:
        await c.set("a", "1")

        async def stopped(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
            cluster.leader_id = 2  # the others elect a new leader meanwhile
            return HANG

        cluster.nodes[1].hooks.append(stopped)
        started = trio.current_time()
        assert await c.incr("n") == 1
        assert trio.current_time() - started < 3.0  # a silent second, then an unanswered probe
        assert c.leader_id == 2
    incr = [(call.node_id, call.body["seq"]) for call in cluster.calls if call.op == "command"][1:]
    assert incr[0] == (1, 2) and incr[-1] == (2, 2)  # the same seq: exactly once
    assert [a[2][0] for a in cluster.applied] == ["set", "incr"]


async def test_a_leader_slow_to_commit_but_alive_is_not_left(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Review finding: a commit slower than ``attempt_timeout_ms`` on a healthy leader (a slow fsync
    on a busy machine) must not make the client reconnect and propose the command again: the
    node answers the status probe, so the client keeps waiting on the same connection."""
    cluster = await start_cluster(nursery)
    async with trimaran.connect(cluster.addresses(), timeout_ms=5_000, attempt_timeout_ms=1_000) as c:
        await c.set("a", "1")

        async def slow_commit(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
            if op == "command":
                await trio.sleep(3.5)
            return None

        cluster.nodes[1].hooks.append(slow_commit)
        assert await c.incr("n") == 1
    incr = [call for call in cluster.calls if call.op == "command"][1:]
    assert [call.node_id for call in incr] == [1], "sent once, to the leader"
    probes = [call for call in cluster.calls if call.op == "status" and call.node_id == 1]
    assert len(probes) >= 2  # one per silent second while the commit took 3.5 s
    assert cluster.nodes[1].connections_accepted == 1


def test_endpoints_default_to_the_environment_then_to_make_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from trimaran.cli import _DEFAULT_ENDPOINTS
    from trimaran.client.client import DEFAULT_ENDPOINTS, ENDPOINTS_ENV

    monkeypatch.delenv(ENDPOINTS_ENV, raising=False)
    assert [str(a) for a in Client().endpoints] == DEFAULT_ENDPOINTS.split(",")
    assert _DEFAULT_ENDPOINTS == DEFAULT_ENDPOINTS  # the CLI's default is the library's
    monkeypatch.setenv(ENDPOINTS_ENV, "127.0.0.1:9001,127.0.0.1:9002")
    assert [str(a) for a in trimaran.connect().endpoints] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert [str(a) for a in Client("127.0.0.1:9003").endpoints] == ["127.0.0.1:9003"]  # given ones win
