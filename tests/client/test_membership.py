"""Membership from the CLI on real processes (issue 13): grow a 3-node cluster to 5 under a write
load (the new nodes' addresses reach the old ones through the members directory), transfer
leadership, the refusals that keep quorum, and shrink back to 3 and then 2 voters, with every
acknowledged write readable at the end and `trimaran status` right at each step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import trimaran
from tests.client.real_cluster import RealCluster
from trimaran.errors import TrimaranError

pytestmark = pytest.mark.slow

TIMEOUT_MS = 20_000


class GrowingCluster(RealCluster):
    """Nodes 1..3 know each other from their flags; nodes 4 and 5 start with `--join ENDPOINTS`
    (node 1..3's client ports) and no --peer flag at all: they learn the founders' addresses from
    the cluster, and the founders learn theirs from `trimaran member add`."""

    def command(self, node_id: int) -> list[str]:
        cmd = super().command(node_id)
        founders = (1, 2, 3)
        joining = node_id not in founders
        keep: list[str] = []
        i = 0
        while i < len(cmd):
            if cmd[i] in ("--peer", "--peer-client") and (joining or int(cmd[i + 1].split("=")[0]) not in founders):
                i += 2
                continue
            keep.append(cmd[i])
            i += 1
        return keep + (["--join", ",".join(self.endpoints[:3])] if joining else [])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trimaran", *args], capture_output=True, text=True, timeout=120)


async def acli(*args: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(cli, *args)


async def status_json(endpoints: str) -> dict[str, Any]:
    done = await acli("status", "--endpoints", endpoints, "--json")
    assert done.returncode in (0, 1), done.stderr
    return dict(json.loads(done.stdout))


async def wait_for_leader(endpoints: str, want: int | None = None, voters: list[int] | None = None) -> dict[str, Any]:
    with trio.fail_after(30):
        while True:
            st = await status_json(endpoints)
            if st["leader_id"] is not None and (want is None or st["leader_id"] == want) and (voters is None or st["voters"] == voters):
                return st
            await trio.sleep(0.2)


async def test_grow_to_five_under_load_transfer_and_shrink(tmp_path: Path) -> None:
    cluster = GrowingCluster(tmp_path, size=5)
    for node_id in (1, 2, 3):
        cluster.start(node_id)
    first3 = ",".join(cluster.endpoints[:3])
    every = ",".join(cluster.endpoints)
    acknowledged: dict[str, str] = {}
    stop = trio.Event()

    async def writer(c: Any, w: int) -> None:
        n = 0
        while not stop.is_set():
            key, value = f"w{w}-{n}", f"{n}"
            try:
                await c.kv.set(key, value)
            except TrimaranError:
                continue  # e.g. a membership change made the leader step down: not acknowledged
            acknowledged[key] = value
            n += 1
            await trio.sleep(0.01)

    try:
        async with trimaran.connect(cluster.endpoints[:3], timeout_ms=TIMEOUT_MS) as c:
            await c.kv.set("warm", "up")
            async with trio.open_nursery() as nursery:
                for w in range(4):
                    nursery.start_soon(writer, c, w)
                for new in (4, 5):
                    cluster.start(new)
                    done = await acli(
                        "member", "add", str(new), "--voter", "--json", "--endpoints", first3,
                        "--peer-address", f"127.0.0.1:{cluster.peer_ports[new]}",
                        "--client-address", f"127.0.0.1:{cluster.client_ports[new]}",
                    )  # fmt: skip
                    assert done.returncode == 0, done.stderr + cluster.log_tail(new)
                    report = json.loads(done.stdout)
                    assert report["voters"] == list(range(1, new + 1))
                    assert (report["tolerance_before"], report["tolerance_after"]) == ((new - 2) // 2, (new - 1) // 2)
                listed = json.loads((await acli("member", "list", "--json", "--endpoints", first3)).stdout)
                assert [m["node_id"] for m in listed["members"]] == [1, 2, 3, 4, 5]
                assert sum(m["role"] == "leader" for m in listed["members"]) == 1 and listed["failure_tolerance"] == 2
                assert listed["members"][4]["peer_address"] == f"127.0.0.1:{cluster.peer_ports[5]}"
                st = await wait_for_leader(every, voters=[1, 2, 3, 4, 5])
                assert sum(n["up"] for n in st["nodes"]) == 5

                # Leadership to node 5, which only the members directory told the others about.
                moved = await acli("leader", "transfer", "--to", "5", "--endpoints", every)
                assert moved.returncode == 0, moved.stderr
                await wait_for_leader(every, want=5)
                refused = await acli("member", "remove", "5", "--endpoints", every)
                assert refused.returncode == 1 and "is the leader" in refused.stderr
                moved = await acli("leader", "transfer", "--to", "1", "--endpoints", every)
                assert moved.returncode == 0, moved.stderr
                await wait_for_leader(every, want=1)

                # Shrink back: 5 -> 3 -> 2 voters, then the 2-voter removal is refused.
                for gone, voters in ((5, [1, 2, 3, 4]), (4, [1, 2, 3]), (3, [1, 2])):
                    done = await acli("member", "remove", str(gone), "--json", "--endpoints", every)
                    assert done.returncode == 0, done.stderr
                    assert json.loads(done.stdout)["voters"] == voters
                    await trio.to_thread.run_sync(cluster.kill, gone)
                refused = await acli("member", "remove", "2", "--endpoints", ",".join(cluster.endpoints[:2]))
                assert refused.returncode == 1 and "2-voter" in refused.stderr
                st = await wait_for_leader(",".join(cluster.endpoints[:2]), voters=[1, 2])
                # A removed node that comes back neither votes nor disrupts: same leader and term
                # (it may not have learned of its removal: then pre-vote finds no voter to follow it).
                await trio.to_thread.run_sync(cluster.start, 3)
                await trio.sleep(3)
                after = await wait_for_leader(",".join(cluster.endpoints[:2]), voters=[1, 2])
                assert (after["leader_id"], after["term"]) == (st["leader_id"], st["term"])
                stop.set()
            for key, value in acknowledged.items():
                entry = await c.kv.get(key)
                assert entry is not None and entry.value == value.encode(), key
        assert len(acknowledged) > 50
    finally:
        cluster.stop_all()


async def test_replace_a_dead_node(tmp_path: Path) -> None:
    """Node 3 dies for good: remove it, then add a new node 4 on a fresh data dir in its place."""
    cluster = GrowingCluster(tmp_path, size=4)
    for node_id in (1, 2, 3):
        cluster.start(node_id)
    first3 = ",".join(cluster.endpoints[:3])
    try:
        async with trimaran.connect(cluster.endpoints[:3], timeout_ms=TIMEOUT_MS) as c:
            for i in range(50):
                await c.kv.set(f"before-{i}", str(i))
            await trio.to_thread.run_sync(cluster.kill, 3)
            st = await wait_for_leader(first3)
            assert [n["up"] for n in st["nodes"] if n["node_id"] == 3] == [False]
            # The leader marks a member inactive once it missed an election timeout of contact.
            with trio.fail_after(20):
                while True:
                    shown = await acli("member", "list", "--json", "--endpoints", first3)
                    assert shown.returncode == 0, shown.stderr  # through the election, too
                    if [m["active"] for m in json.loads(shown.stdout)["members"] if m["node_id"] == 3] == [False]:
                        break
                    await trio.sleep(0.2)
            done = await acli("member", "remove", "3", "--json", "--endpoints", first3)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["voters"] == [1, 2]
            cluster.start(4)
            done = await acli(
                "member", "add", "4", "--voter", "--json", "--endpoints", first3,
                "--peer-address", f"127.0.0.1:{cluster.peer_ports[4]}",
                "--client-address", f"127.0.0.1:{cluster.client_ports[4]}",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr + cluster.log_tail(4)
            assert json.loads(done.stdout)["voters"] == [1, 2, 4]
            for i in range(50):
                await c.kv.set(f"after-{i}", str(i))
            survivors = ",".join(cluster.endpoints[i - 1] for i in (1, 2, 4))
            st = await wait_for_leader(survivors, voters=[1, 2, 4])
            assert all(n["up"] for n in st["nodes"] if n["node_id"] in (1, 2, 4))
            for i in range(50):
                assert (await c.kv.get(f"before-{i}")).value == str(i).encode()
        # The new node holds the whole state: read from it alone, stale (its own applied state).
        async with trimaran.connect([cluster.endpoints[3]], timeout_ms=TIMEOUT_MS) as c4:
            with trio.fail_after(10):
                while (await c4.kv.get("after-49", "stale")) is None:
                    await trio.sleep(0.1)
            assert (await c4.kv.get("before-0", "stale")).value == b"0"
    finally:
        cluster.stop_all()
