"""``trimaran up``'s supervisor (issue 16 item 11): a node that cannot start is reported at once
with its own error while the others keep running, and the restart budget comes back after a
period of health. The policy runs on a clock the test controls; one test runs the real ``up``."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.node.helpers import HOST
from tests.node.test_up import Up, free_base_port, leader_client
from trimaran.node.config import Address
from trimaran.node.local_cluster import (
    EARLY_EXIT_S,
    HEALTHY_RESET_S,
    RESTART_BACKOFF_S_MAX,
    RESTARTS_PER_NODE_MAX,
    LocalNode,
    RestartBudget,
    Supervisor,
    _Child,
)

# ---------------------------------------------------------------------------- the budget


def test_a_node_that_cannot_start_is_retried_with_growing_pauses_then_left_stopped() -> None:
    budget = RestartBudget()
    now = 0.0
    delays = []
    for _ in range(RESTARTS_PER_NODE_MAX):
        decision = budget.on_exit(started_at=now, exited_at=now + 0.2)
        assert decision.restart and decision.early
        delays.append(decision.delay_s)
        now += 0.2 + decision.delay_s
    assert delays == sorted(delays) and delays[0] > 0 and delays[-1] <= RESTART_BACKOFF_S_MAX
    assert not budget.on_exit(started_at=now, exited_at=now + 0.2).restart


def test_the_budget_comes_back_after_a_period_of_health() -> None:
    """A node that crashes now and then but runs well in between is never given up on: before,
    its fifth crash in a month stopped the whole cluster."""
    budget = RestartBudget()
    now = 0.0
    for crash in range(10 * RESTARTS_PER_NODE_MAX):
        ran_s = HEALTHY_RESET_S + 1 if crash % 2 else EARLY_EXIT_S + 1  # healthy runs in between
        decision = budget.on_exit(started_at=now, exited_at=now + ran_s)
        assert decision.restart and not decision.early and decision.delay_s == 0, crash
        assert decision.restarts <= 2
        now += ran_s
    # Crashes in a row with no healthy run between them still spend it.
    for _ in range(RESTARTS_PER_NODE_MAX - budget.restarts):
        assert budget.on_exit(started_at=now, exited_at=now + EARLY_EXIT_S + 1).restart
        now += EARLY_EXIT_S + 1
    assert not budget.on_exit(started_at=now, exited_at=now + EARLY_EXIT_S + 1).restart


# ---------------------------------------------------------------------------- the supervisor


@dataclass
class FakeProcess:
    returncode: int | None = None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeChild(_Child):
    """A child whose process the test ends; start() records the time and makes a new process."""

    def __init__(self, node_id: int, root: Path, clock: Clock) -> None:
        node = LocalNode(
            node_id, Address(HOST, 1), Address(HOST, 2), root / f"node{node_id}", root / f"node{node_id}.log", Address(HOST, 3)
        )
        super().__init__(node, [])
        self.clock = clock
        self.starts = 0
        self.fake = FakeProcess()
        self.process = self.fake  # type: ignore[assignment]

    async def start(self) -> None:
        self.starts += 1
        self.fake = FakeProcess()
        self.process = self.fake  # type: ignore[assignment]
        self.started_at = self.clock()


async def test_a_node_that_cannot_start_is_reported_at_once_and_the_others_keep_running(tmp_path: Path) -> None:
    clock = Clock()
    children = [FakeChild(i, tmp_path, clock) for i in (1, 2, 3)]
    for child in children:
        child.started_at = clock()
    lines: list[str] = []
    supervisor = Supervisor(children, lines.append, clock)
    children[1].node.log_path.write_text("node 2: booting\nnode 2: opening /data/node2\nError: File exists: /data/node2\n")
    clock.now += 0.3
    children[1].fake.returncode = 1
    assert await supervisor.step()
    # Its own error, at once (not "no leader within 20 s" twenty seconds later).
    assert "node 2 could not start" in lines[0] and "Error: File exists: /data/node2" in lines[0], lines
    # With the lines that led to it, indented under it; then the restart.
    assert lines[1:3] == ["    | node 2: booting", "    | node 2: opening /data/node2"], lines
    assert "restarting node 2 in" in lines[3], lines
    for _ in range(RESTARTS_PER_NODE_MAX):  # each restart fails at once; pauses pass on the clock
        clock.now += RESTART_BACKOFF_S_MAX
        assert await supervisor.step()  # restarts it
        clock.now += 0.3
        children[1].fake.returncode = 1
        assert await supervisor.step()
    assert children[1].given_up and children[1].starts == RESTARTS_PER_NODE_MAX
    assert "leaving it stopped" in lines[-1], lines
    assert children[0].starts == children[2].starts == 0  # the others were never touched
    assert all(child.fake.returncode is None for child in (children[0], children[2]))
    # Losing a second node leaves no majority: only then is the cluster stopped.
    for _ in range(RESTARTS_PER_NODE_MAX + 1):
        clock.now += RESTART_BACKOFF_S_MAX
        await supervisor.step()
        clock.now += 0.3
        children[2].fake.returncode = 1
        ok = await supervisor.step()
    assert not ok and not supervisor.quorum_possible()


async def test_a_crashing_node_is_restarted_at_once_and_its_budget_resets(tmp_path: Path) -> None:
    clock = Clock()
    children = [FakeChild(i, tmp_path, clock) for i in (1, 2, 3)]
    lines: list[str] = []
    supervisor = Supervisor(children, lines.append, clock)
    for crash in range(3 * RESTARTS_PER_NODE_MAX):  # a crash every 2 minutes: healthy in between
        clock.now += 2 * HEALTHY_RESET_S
        children[0].fake.returncode = -9
        assert await supervisor.step()  # reported, restart due now
        assert await supervisor.step()  # restarted
        assert children[0].starts == crash + 1 and not children[0].given_up
    assert all("(1/" in line for line in lines if "restarting" in line), lines


# ---------------------------------------------------------------------------- the real `up`

START_ERROR_S = 10.0


@pytest.mark.slow
async def test_up_reports_a_node_that_cannot_start_and_serves_with_the_others(tmp_path: Path) -> None:
    base = free_base_port()
    data = tmp_path / "data"
    data.mkdir()
    (data / "node2").write_text("not a directory")  # node 2's data directory cannot be made
    up = Up(tmp_path, base)
    try:
        with trio.fail_after(START_ERROR_S):
            while "node 2 could not start" not in up.output():
                assert up.proc.poll() is None, up.output()
                await trio.sleep(0.05)
        line = next(l for l in up.output().splitlines() if "node 2 could not start" in l)
        assert "node2" in line and "no leader" not in up.output(), up.output()  # its own error
        await up.wait_up()  # nodes 1 and 3 elect a leader and serve
        client = await leader_client(base, up.token)
        await client.set(b"k", b"v")
        assert await client.get(b"k") == b"v"
        await client.aclose()
        assert up.proc.poll() is None, up.output()
        assert await up.interrupt() == 0, up.output()
    finally:
        up.kill()


def test_the_banner_names_a_cli_the_users_shell_can_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Issue 14: `make run` does not activate the venv, so `trimaran` is not on PATH."""
    import os
    import sys

    from trimaran.node import local_cluster

    monkeypatch.setenv("PATH", str(tmp_path))  # no trimaran on PATH
    script = os.path.join(os.path.dirname(sys.executable), "trimaran")
    assert local_cluster.cli_command() == os.path.relpath(script)
    (tmp_path / "trimaran").write_text("#!/bin/sh\n")
    (tmp_path / "trimaran").chmod(0o755)
    assert local_cluster.cli_command() == "trimaran"
