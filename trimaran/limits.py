"""Every fixed bound of trimaran, with its unit in its name.

Bounds that a deployment may tune live in the config objects (``RaftConfig`` and friends), whose
``validate()`` checks them against the hard ceilings here. Relations between bounds are asserted at
import, so an edit that breaks one fails at once rather than in production.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# --- Wire ----------------------------------------------------------------------------------------
#: Largest frame accepted on any socket (peer or client); checked before the body is read.
frame_bytes_max = 16 * MIB
#: Length prefix of every frame.
frame_header_bytes = 4
#: msgpack decoder ceilings (applied to every untrusted decode).
msgpack_str_len_max = frame_bytes_max
msgpack_bin_len_max = frame_bytes_max
msgpack_array_len_max = 1_000_000
msgpack_map_len_max = 100_000
#: A client connection must send its first frame (the handshake) within this time.
handshake_timeout_ms = 5_000

# --- Client commands ------------------------------------------------------------------------------
key_bytes_max = 4 * KIB
value_bytes_max = 1 * MIB
#: One client command after encoding (key + value + operation overhead).
command_bytes_max = value_bytes_max + key_bytes_max + 4 * KIB
#: Commands packed into one log entry by the Replica.
proposal_batch_commands_max = 1024
#: Bytes of commands packed into one log entry.
proposal_batch_bytes_max = 4 * MIB

# --- Raft ------------------------------------------------------------------------------------------
#: Hard ceiling on entries bytes carried by one AppendEntries (RaftConfig may pick less).
append_bytes_max = 8 * MIB
#: Hard ceiling on AppendEntries in flight to one follower.
inflight_messages_max = 1024
#: Size of one InstallSnapshot chunk ceiling.
snapshot_chunk_bytes_max = 4 * MIB
#: Cluster size ceiling (voters + learners).
members_max = 15

# --- Sessions (exactly-once, thesis §6.3) ----------------------------------------------------------
sessions_max = 100_000
#: Saved responses kept per session for pipelined requests not yet acknowledged by the client.
session_responses_max = 1024

# --- Storage ---------------------------------------------------------------------------------------
storage_map_bytes_initial = 64 * MIB
storage_map_bytes_max = 64 * GIB
#: A log read returns at most this many bytes unless the first entry alone is larger.
log_read_bytes_max = 16 * MIB

assert frame_header_bytes == 4
assert command_bytes_max < frame_bytes_max
assert proposal_batch_bytes_max >= command_bytes_max, "one maximal command must fit a batch"
assert append_bytes_max >= proposal_batch_bytes_max, "one maximal entry must fit an append"
assert append_bytes_max + 64 * KIB < frame_bytes_max, "an append plus headers must fit a frame"
assert snapshot_chunk_bytes_max + 64 * KIB < frame_bytes_max
assert log_read_bytes_max >= append_bytes_max
assert storage_map_bytes_initial <= storage_map_bytes_max

# --- Disk full (appended for issue 16 item 7) ------------------------------------------------------
#: A write that fails with EIO while the file system has less than this free is a full disk (LMDB
#: reports a write that fits only in part as EIO), not a failing one: refused, kept and retried.
storage_disk_full_free_bytes_max = 1 * MIB
#: A leader refuses client writes (``storage_full``) once its store has less room than this, or than
#: ``storage_reserve_disk_percent`` of its size (the file system's or the map cap's), whichever is
#: less, so that Raft's own writes (terms, votes, a new leader's entry, catching up) find room.
storage_reserve_bytes_max = 64 * MIB
storage_reserve_disk_percent = 5

assert 0 <= storage_reserve_disk_percent < 100
