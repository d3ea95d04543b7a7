"""``trimaran snapshot inspect`` on a backup file written here (no cluster): every field a user
checks is on a labelled line, the CRC-32 as the nodes check it and the SHA-256 both."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

from click.testing import CliRunner

from trimaran.cli import main
from trimaran.protocols import backup_file
from trimaran.protocols.codec import pack
from trimaran.protocols.messages import Membership, SnapshotMeta


def test_inspect_labels_index_term_membership_size_crc_and_sha256(tmp_path: Path) -> None:
    data = pack({"timestamp_ms": 1_700_000_000_000, "sessions": [], "services": {"kv": {"k": b"v" * 2_000}}})
    meta = SnapshotMeta(41, 3, Membership((1, 2, 3), (4,)), len(data), zlib.crc32(data))
    sha256 = hashlib.sha256(data).hexdigest()
    backup = tmp_path / "c.backup"
    backup.write_bytes(backup_file.encode_prefix(backup_file.header_for("c1", meta, sha256)) + data)

    result = CliRunner().invoke(main, ["snapshot", "inspect", str(backup)])
    assert result.exit_code == 0, result.output
    rows = {line[:9].strip(): line[10:] for line in result.output.splitlines() if not line.startswith(" ")}
    assert rows["cluster"] == "c1" and rows["index"] == "41" and rows["term"] == "3"
    assert rows["voters"] == "1, 2, 3" and rows["learners"] == "4"
    assert rows["size"] == f"{len(data)} bytes ({len(data) / 1024:.1f} KiB)"
    assert rows["crc32"].startswith(f"0x{zlib.crc32(data):08x} ") and rows["sha256"] == sha256
    assert rows["log time"].startswith("2023-11-14 22:13:20 UTC")
    assert rows["auth"].startswith("off")

    guarded = tmp_path / "g.backup"
    guarded.write_bytes(backup_file.encode_prefix(backup_file.header_for("c1", meta, sha256, auth_required=True)) + data)
    result = CliRunner().invoke(main, ["snapshot", "inspect", str(guarded)])
    assert "auth      required: start the restored nodes with --auth-public-key" in result.output, result.output
    result = CliRunner().invoke(main, ["snapshot", "restore", str(guarded), "--data-dir", str(tmp_path / "n1"), "--id", "1"])
    assert result.exit_code == 0 and "--auth-public-key" in result.output, result.output
    assert (tmp_path / "n1" / "AUTH_REQUIRED").exists()
