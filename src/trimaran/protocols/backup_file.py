"""The backup file of ``trimaran snapshot save`` / ``restore`` / ``inspect``, as bytes in, bytes out.

A backup is one consistent snapshot of a cluster's replicated state (every service, the client
sessions, log time), taken on the leader at a linearizable point, with what a new cluster needs to
boot from it::

    MAGIC (16 bytes) | header length (4 bytes, big-endian) | header (msgpack map) | snapshot bytes

The header: ``version``, ``cluster_id`` (of the cluster it came from), ``index`` and ``term`` (the
log position it stands for), ``voters`` and ``learners`` (the membership there), ``size_bytes``,
``crc32`` (as the snapshot's meta), ``sha256`` (of the snapshot bytes; what ``inspect`` and
``restore`` check before anything else) and ``auth_required`` (the node that saved it required
tokens: ``restore`` marks the new data dirs so, see :mod:`trimaran.node.data_dir`; from version 2). The snapshot bytes are exactly what a node stores and
sends to a lagging follower, so restoring is publishing them in a new data dir.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from trimaran import limits
from trimaran.errors import InvalidArgument
from trimaran.protocols.codec import brief, pack, unpack
from trimaran.protocols.messages import Membership, SnapshotMeta

MAGIC = b"TRIMARAN-BACKUP\n"
#: 2 added ``auth_required``. A version-1 header (which has no such field) is read as False; a
#: trimaran that reads only version 1 refuses a version-2 file rather than drop the field unread.
VERSION = 2
VERSIONS_READ = (1, 2)
_LENGTH = struct.Struct(">I")
#: A header is a few hundred bytes; anything past this is not one of ours.
HEADER_BYTES_MAX = 64 * limits.KIB


@dataclass(frozen=True, slots=True)
class BackupHeader:
    cluster_id: str
    index: int
    term: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    size_bytes: int
    crc32: int
    sha256: str
    auth_required: bool = False

    def meta(self, voters: tuple[int, ...] | None = None) -> SnapshotMeta:
        """The snapshot meta to publish (``voters``: a new cluster's, instead of the source's)."""
        membership = Membership(tuple(sorted(voters)), ()) if voters else Membership(self.voters, self.learners)
        return SnapshotMeta(self.index, self.term, membership, self.size_bytes, self.crc32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION, "cluster_id": self.cluster_id, "index": self.index, "term": self.term,
            "voters": list(self.voters), "learners": list(self.learners), "size_bytes": self.size_bytes,
            "crc32": self.crc32, "sha256": self.sha256, "auth_required": self.auth_required,
        }  # fmt: skip


def header_for(cluster_id: str, meta: SnapshotMeta, sha256: str, auth_required: bool = False) -> BackupHeader:
    m = meta.membership
    return BackupHeader(
        cluster_id, meta.last_index, meta.last_term, m.voters, m.learners, meta.size_bytes, meta.checksum, sha256, auth_required
    )


def encode_prefix(header: BackupHeader) -> bytes:
    """What precedes the snapshot bytes in the file."""
    body = pack(header.to_dict())
    return MAGIC + _LENGTH.pack(len(body)) + body


def decode_prefix(data: bytes) -> tuple[BackupHeader, int]:
    """The header at the start of ``data`` (at least the prefix) and where the snapshot bytes begin.
    ``InvalidArgument`` names what is wrong with a file that is not a backup of this version."""
    if not data.startswith(MAGIC):
        raise InvalidArgument("not a trimaran backup file (its first bytes are not the backup magic)")
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start:
        raise InvalidArgument("the backup file is truncated inside its header")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if length > HEADER_BYTES_MAX or len(data) < start + length:
        raise InvalidArgument("the backup file's header is truncated or too long")
    return header_from(unpack(data[start : start + length])), start + length


def header_from(h: Any) -> BackupHeader:
    """A header from its map (the file's, or a node's ``backup`` answer); InvalidArgument if it is
    not one of this version."""
    try:
        if h["version"] not in VERSIONS_READ:
            raise InvalidArgument(f"backup format version {brief(h['version'])}; this trimaran reads {list(VERSIONS_READ)}")
        auth = h["auth_required"] if h["version"] >= 2 else False
        if type(auth) is not bool:  # read strictly: a wrong False would restore data without its guard
            raise InvalidArgument(f"the backup header's auth_required is {brief(auth)}, not true or false")
        return BackupHeader(
            str(h["cluster_id"]), int(h["index"]), int(h["term"]), tuple(int(v) for v in h["voters"]),
            tuple(int(v) for v in h["learners"]), int(h["size_bytes"]), int(h["crc32"]), str(h["sha256"]), auth,
        )  # fmt: skip
    except InvalidArgument:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed header is the same refusal
        raise InvalidArgument(f"the backup header is malformed ({type(exc).__name__})") from None


def check_snapshot(header: BackupHeader, data: bytes) -> None:
    """The snapshot bytes are the ones the header names (size, CRC-32 and SHA-256)."""
    if len(data) != header.size_bytes:
        raise InvalidArgument(f"the backup holds {len(data)} snapshot bytes, its header says {header.size_bytes}: truncated?")
    if zlib.crc32(data) != header.crc32 or hashlib.sha256(data).hexdigest() != header.sha256:
        raise InvalidArgument("the backup's snapshot bytes do not match its checksums: the file is damaged")


def describe(data: bytes) -> dict[str, Any]:
    """What a snapshot holds: its log time (ms since the epoch, the leader's clock) and the bytes
    each part takes once packed (every service, the client sessions)."""
    state = unpack(data, size_bytes_max=len(data), depth_max=limits.msgpack_pack_depth_max)
    parts = {name: len(pack(value)) for name, value in sorted(state["services"].items())}
    parts["(sessions)"] = len(pack(state["sessions"]))
    return {"log_time_ms": int(state["timestamp_ms"]), "parts_bytes": parts}
