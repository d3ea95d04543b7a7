"""Backup and restore (issue 13): `trimaran snapshot save` from a live 3-node cluster, `inspect`,
`restore` into the data dirs of a new cluster, which then serves the same state, and the refusals
(damaged file, non-empty data dir, a node id outside the voters)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import trio

import trimaran
from tests.client.real_cluster import RealCluster
from trimaran.node.backup_restore import read_backup
from trimaran.protocols import backup_file
from trimaran.protocols.codec import pack
from trimaran.protocols.messages import Membership, SnapshotMeta

pytestmark = pytest.mark.slow

TIMEOUT_MS = 20_000


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trimaran", *args], capture_output=True, text=True, timeout=120)


async def _fill(endpoints: list[str], keys: int) -> dict[bytes, tuple[bytes, int]]:
    """Write ``keys`` keys (every write acknowledged) and read back each one's value and revision."""
    async with trimaran.connect(endpoints, timeout_ms=TIMEOUT_MS) as c:
        for i in range(keys):
            await c.kv.set(f"k{i:04d}", f"value {i}" * 10)
        await c.kv.incr("counter", 7)
        await c.kv.set("later", "expires", ttl_ms=3_600_000)
        return {item.key: (item.value, item.revision) async for item in c.kv.scan(b"")}


async def _read_all(endpoints: list[str]) -> tuple[dict[bytes, tuple[bytes, int]], int]:
    async with trimaran.connect(endpoints, timeout_ms=TIMEOUT_MS) as c:
        out = {item.key: (item.value, item.revision) async for item in c.kv.scan(b"")}
        revision = await c.kv.set("after-restore", "x")  # the new cluster writes on from there
        return out, revision


def test_a_backup_of_a_live_cluster_restores_into_a_new_one_with_equal_state(tmp_path: Path) -> None:
    source = RealCluster(tmp_path / "source")
    (tmp_path / "source").mkdir()
    source.start_all()
    backup = tmp_path / "cluster.backup"
    try:
        written = trio.run(_fill, source.endpoints, 300)
        saved = cli("snapshot", "save", str(backup), "--endpoints", ",".join(source.endpoints), "--json")
        assert saved.returncode == 0, saved.stderr
        header = json.loads(saved.stdout)
    finally:
        source.stop_all()
    assert backup.exists() and not Path(str(backup) + ".part").exists()
    assert header["voters"] == [1, 2, 3] and header["index"] >= 302 and header["size_bytes"] > 300 * 90
    assert header["auth_required"] is False  # this cluster runs without auth: its restored nodes may too

    shown = cli("snapshot", "inspect", str(backup), "--json")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["sha256"] == header["sha256"] and info["index"] == header["index"]
    assert info["parts_bytes"]["kv"] > 300 * 90 and "auth" in info["parts_bytes"]
    table = cli("snapshot", "inspect", str(backup))
    assert f"index     {header['index']}" in table.stdout and "kv" in table.stdout

    target = RealCluster(tmp_path / "target")
    (tmp_path / "target").mkdir()
    for node_id in (1, 2, 3):
        done = cli("snapshot", "restore", str(backup), "--data-dir", str(tmp_path / "target" / f"node{node_id}"), "--id", str(node_id))
        assert done.returncode == 0, done.stderr
    # Restore never overwrites a node's data.
    again = cli("snapshot", "restore", str(backup), "--data-dir", str(tmp_path / "target" / "node1"), "--id", "1")
    assert again.returncode == 1 and "not empty" in again.stderr
    target.start_all()
    try:
        restored, revision = trio.run(_read_all, target.endpoints)
    finally:
        target.stop_all()
    assert restored == written  # every key, value and revision, the TTL key included
    assert len(restored) == 302 and revision > header["index"]


def test_damaged_or_misdirected_backups_are_refused(tmp_path: Path) -> None:
    data = pack({"timestamp_ms": 5, "sessions": [], "services": {"kv": {"x": 1}}})
    meta = SnapshotMeta(9, 2, Membership((1, 2, 3)), len(data), zlib.crc32(data))
    good = tmp_path / "good.backup"
    good.write_bytes(backup_file.encode_prefix(backup_file.header_for("c1", meta, hashlib.sha256(data).hexdigest())) + data)
    header, snapshot = read_backup(good)
    assert (header.index, header.term, header.voters, snapshot) == (9, 2, (1, 2, 3), data)
    assert backup_file.describe(snapshot)["log_time_ms"] == 5

    damaged = tmp_path / "damaged.backup"
    damaged.write_bytes(good.read_bytes()[:-1] + b"\x00")
    result = cli("snapshot", "inspect", str(damaged))
    assert result.returncode == 1 and "damaged" in result.stderr
    short = tmp_path / "short.backup"
    short.write_bytes(good.read_bytes()[:-3])
    assert "truncated" in cli("snapshot", "inspect", str(short)).stderr
    other = tmp_path / "other.file"
    other.write_bytes(b"PK\x03\x04 not a backup")
    assert "not a trimaran backup" in cli("snapshot", "inspect", str(other)).stderr

    outside = cli("snapshot", "restore", str(good), "--data-dir", str(tmp_path / "n4"), "--id", "4")
    assert outside.returncode == 1 and "not a member" in outside.stderr and not (tmp_path / "n4").exists()
    moved = cli("snapshot", "restore", str(good), "--data-dir", str(tmp_path / "n4"), "--id", "4", "--voters", "4,5,6")
    assert moved.returncode == 0, moved.stderr
