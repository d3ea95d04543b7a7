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
#: Deepest nesting of lists and maps in one client command or query (checked at the edge).
command_depth_max = 64
#: Deepest nesting of lists and maps accepted in any msgpack value from outside (a client or peer
#: frame, a log entry at apply), checked on the bytes before any object is built: a deep value
#: would otherwise reach ``repr`` or the encoder, which recurse (Python stops near 1,000 levels,
#: msgpack's packer at 511).
msgpack_depth_max = command_depth_max + 8
#: msgpack's packer refuses values nested deeper than this (its default recursion limit).
msgpack_pack_depth_max = 511
#: Characters of an untrusted value shown in an error message or a log line.
untrusted_text_chars_max = 120

# --- Auth (trimaran.protocols.tokens, trimaran.protocols.scopes) ----------------------------------
#: A whole PASETO token as sent in the client hello.
token_bytes_max = 8 * KIB
#: The longest lifetime (exp - iat) a node accepts; a token lives at most this long.
token_ttl_ms_max = 366 * 24 * 3600 * 1000
#: Clock skew tolerated when checking exp and nbf (a node may configure less).
token_leeway_ms_default = 30_000
#: A key id in a token footer.
kid_chars_max = 64
#: One scope string, and the scopes one token may carry.
scope_bytes_max = 512
scopes_max = 64
#: Public keys the auth service holds (bootstrap keys from the configuration not counted).
trusted_keys_max = 64
#: Revoked token ids held at once (each dropped when its token would have expired anyway).
revocations_max = 100_000

# --- Client commands ------------------------------------------------------------------------------
key_bytes_max = 4 * KIB
value_bytes_max = 1 * MIB
#: One client command after encoding (key + value + operation overhead).
command_bytes_max = value_bytes_max + key_bytes_max + 4 * KIB
#: Commands packed into one log entry by the Replica.
proposal_batch_commands_max = 1024
#: Bytes of commands packed into one log entry.
proposal_batch_bytes_max = 4 * MIB

# --- Jobs (trimaran.services.jobs) ----------------------------------------------------------------
#: A queue, group, unique key, worker or schedule name; a job or session id.
job_name_chars_max = 256
#: One job's payload, and one completed job's result.
job_payload_bytes_max = value_bytes_max
job_result_bytes_max = value_bytes_max
#: One failure's error text, and one progress report.
job_error_chars_max = 4 * KIB
job_progress_bytes_max = 4 * KIB
#: Priorities are in [-job_priority_max, job_priority_max]; higher is claimed first.
job_priority_max = 1_000
#: Dependencies of one job.
job_depends_on_max = 64
#: Ceiling of a job's max_attempts (its default is job_attempts_default, RabbitMQ's delivery limit).
job_attempts_max = 1_000
job_attempts_default = 20
#: Jobs in one enqueue_batch, queues named by one claim, jobs handed out by one claim.
job_enqueue_batch_max = 1_000
job_claim_queues_max = 32
job_claim_jobs_max = 1_000
#: Jobs one complete_batch reports (a worker's completions gathered into one command).
job_complete_batch_max = 1_000
#: A long-polling claim (``wait_ms``) waits at most this long on the node (which also cuts it to
#: half its request timeout); parked claims per client connection and per node (past either, a
#: claim is proposed at once). See trimaran.node.claim_waits.
job_claim_wait_ms_max = 60_000
job_claim_waiters_connection_max = 64
job_claim_waiters_node_max = 4_096
#: Payload bytes handed out by one claim (at least one job): the answer must fit a frame.
job_claim_payload_bytes_max = 8 * MIB
#: Jobs one queue holds (waiting, running, dead-lettered, and finished ones keeping their result).
job_queue_jobs_max = 1_000_000
job_queues_max = 10_000
job_sessions_max = 100_000
#: Jobs one worker session may hold running at once.
job_session_jobs_max = 10_000
job_session_ttl_ms_max = 3_600_000
#: A job's lease (timeout_ms), delay, backoff, result TTL and unique window ceilings.
job_timeout_ms_max = 7 * 24 * 3_600_000
job_delay_ms_max = 366 * 24 * 3_600_000
job_backoff_ms_max = 7 * 24 * 3_600_000
job_result_ttl_ms_max = 30 * 24 * 3_600_000
#: A rate limit's window (N starts per window of log time).
job_rate_window_ms_max = 24 * 3_600_000
job_schedules_max = 10_000
#: Missed slots a catch_up schedule fires per log entry (the rest in the following entries).
job_schedule_catch_up_slots_max = 100
#: Jobs named by one dlq_requeue / dlq_purge, and listed by one dlq page.
job_dlq_batch_max = 1_000
#: Jobs one ``list`` page examines (it may skip many of other states).
job_list_scan_max = 10_000

# --- RESP (trimaran.protocols.resp: the Redis-protocol front door) --------------------------------
#: One bulk string of a RESP command (an argument): the KV value limit; a key is smaller still.
resp_bulk_bytes_max = value_bytes_max
#: Arguments in one RESP command, its name included: room for MSET's 10,000 pairs (the KV
#: service's ``mset_keys_max``; that relation is asserted in tests/protocols/test_resp.py).
resp_command_args_max = 32 * KIB
#: One inline command line (``PING\r\n``, redis-benchmark's PING_INLINE), its LF excluded (a CR counts);
#: Redis's own PROTO_INLINE_MAX_SIZE.
resp_inline_bytes_max = 64 * KIB
#: One length line (``*<count>`` or ``$<length>``), its type byte and CRLF excluded: a sign and
#: the 19 digits of an int64 fit.
resp_length_line_bytes_max = 32
#: Wire framing of one argument, ``$<length>\r\n`` before its bytes and ``\r\n`` after.
resp_arg_framing_bytes_max = 16
#: Wire bytes of one RESP command: a maximal native command plus the framing of every argument.
resp_command_bytes_max = command_bytes_max + resp_command_args_max * resp_arg_framing_bytes_max
#: Bytes the RESP listener reads from a socket at once.
resp_receive_bytes_max = 64 * KIB
#: Bytes one RespParser holds unparsed: one partial command plus one read (the listener takes
#: every complete command out before it reads again).
resp_buffer_bytes_max = resp_command_bytes_max + resp_receive_bytes_max
#: Keys one RESP ``KEYS`` may examine (it scans page by page; beyond this it refuses: use SCAN).
resp_keys_scanned_max = 100_000
#: Rounds (a scan page, then a txn deleting it) of one RESP ``FLUSHDB`` at most.
resp_flush_rounds_max = 100_000
#: Channels one RESP connection may SUBSCRIBE to at once (the WebSocket gateway's bound too).
resp_channels_per_connection_max = 1_000
#: Patterns one RESP connection may PSUBSCRIBE to at once: each is matched against every chat event
#: this node applies, so they are few.
resp_patterns_per_connection_max = 64

# --- Raft ------------------------------------------------------------------------------------------
#: Hard ceiling on entries bytes carried by one AppendEntries (RaftConfig may pick less).
append_bytes_max = 8 * MIB
#: Hard ceiling on AppendEntries in flight to one follower.
inflight_messages_max = 1024
#: Size of one InstallSnapshot chunk ceiling.
snapshot_chunk_bytes_max = 4 * MIB
#: ``trimaran snapshot save``: the bytes of one ``backup_chunk`` answer, and how many backups a
#: node holds in memory at once (one per connection that asked, until it closes or asks again).
backup_chunk_bytes = 1 * MIB
backups_held_max = 2
#: Cluster size ceiling (voters + learners).
members_max = 15
#: Every term, index, node id, sequence number and offset in a Raft message or record. Far below
#: the codec's int64 so that no value a peer may send can push a counter into overflow: one
#: election adds one to a term, one entry one to an index (2**53 entries at a million a second
#: last 285 years). A message over it is refused as malformed.
raft_counter_max = 2**53
#: How far one message may raise a node's term. With Pre-Vote (thesis §9.6) terms move by about
#: one per leader change, so a real gap is tiny; a forged message must not jump a node near
#: raft_counter_max, where it could never campaign again (that takes 2**21 forged messages). So no
#: single forged message can stop a cluster: a jump within this bound is followed by every node.
#: A forger who may send many can still stop one (two jumps in a row leave a node too far ahead of
#: its peers to talk to them): against that only peer authentication helps (mutual TLS).
raft_term_jump_max = 2**32

# --- Sessions (exactly-once, thesis §6.3) ----------------------------------------------------------
sessions_max = 100_000
#: Saved responses kept per session for pipelined requests not yet acknowledged by the client.
session_responses_max = 1024

# --- Storage ---------------------------------------------------------------------------------------
storage_map_bytes_initial = 64 * MIB
storage_map_bytes_max = 64 * GIB
#: A log read returns at most this many bytes unless the first entry alone is larger.
log_read_bytes_max = 16 * MIB
#: A write that fails with EIO while the file system has less than this free is a full disk (LMDB
#: reports a write that fits only in part as EIO), not a failing one: refused, kept and retried.
storage_disk_full_free_bytes_max = 1 * MIB
#: A leader refuses client writes (``storage_full``) once its store has less room than this, or than
#: ``storage_reserve_disk_percent`` of its size (the file system's or the map cap's), whichever is
#: less, so that Raft's own writes (terms, votes, a new leader's entry, catching up) find room.
storage_reserve_bytes_max = 64 * MIB
storage_reserve_disk_percent = 5

# --- Chat (trimaran.services.chat) -----------------------------------------------------------------
# Ceilings; a ChatService is built with its own values at or below them (its constructor checks).
#: A channel name: 1..this many characters of ``[A-Za-z0-9_.:@=-]`` (ASCII, so chars == bytes).
chat_channel_chars_max = 128
#: One published message's data.
chat_message_bytes_max = 64 * KIB
#: Channels held at once (a channel exists while it keeps history or has presence members).
chat_channels_max = 100_000
#: Messages kept in one channel's history.
chat_history_messages_max = 100_000
#: Bytes of history kept in one channel (data + ``MESSAGE_OVERHEAD_BYTES`` each).
chat_history_bytes_max = 64 * MIB
#: Bytes of history kept over all channels (the oldest messages anywhere go first).
chat_history_bytes_total_max = 4 * GIB
#: How long (log time) a message may be kept.
chat_history_age_ms_max = 31 * 24 * 3_600_000
#: Events kept in the applied-events window the edge reads to push to subscribers.
chat_events_max = 1_000_000
chat_events_bytes_max = 256 * MIB
#: One presence member's ``info``.
chat_presence_info_bytes_max = 1 * KIB
#: Presence sessions (one per gateway connection) held at once.
chat_presence_sessions_max = 100_000
#: Members of one channel's presence.
chat_presence_members_max = 5_000
#: Channels one presence session may be in (bounds the leaves one lapsed session makes at once).
chat_presence_channels_per_session_max = 1_000
#: A presence session's TTL (log time between heartbeats before it lapses).
chat_presence_ttl_ms_min = 1_000
chat_presence_ttl_ms_max = 3_600_000

assert frame_header_bytes == 4
assert command_depth_max + 3 <= msgpack_depth_max, "a log entry wraps a command in three levels"
assert msgpack_depth_max * 2 < msgpack_pack_depth_max, "what was decoded, and results built on it, re-encode"
assert command_bytes_max < frame_bytes_max
assert scope_bytes_max < token_bytes_max and kid_chars_max < token_bytes_max
assert proposal_batch_bytes_max >= command_bytes_max, "one maximal command must fit a batch"
assert append_bytes_max >= proposal_batch_bytes_max, "one maximal entry must fit an append"
assert append_bytes_max + 64 * KIB < frame_bytes_max, "an append plus headers must fit a frame"
assert snapshot_chunk_bytes_max + 64 * KIB < frame_bytes_max
assert backup_chunk_bytes + 64 * KIB < frame_bytes_max
assert log_read_bytes_max >= append_bytes_max
assert storage_map_bytes_initial <= storage_map_bytes_max
assert raft_term_jump_max * 1024 < raft_counter_max < 2**63, "counters far below the codec's int64"
assert 0 <= storage_reserve_disk_percent < 100
assert chat_message_bytes_max + chat_channel_chars_max + 4 * KIB <= command_bytes_max, "a publish fits a command"
assert chat_message_bytes_max <= chat_history_bytes_max <= chat_history_bytes_total_max
assert chat_presence_info_bytes_max + chat_channel_chars_max + 4 * KIB <= command_bytes_max, "a join fits a command"
assert chat_message_bytes_max <= chat_events_bytes_max
assert 0 < chat_presence_ttl_ms_min <= chat_presence_ttl_ms_max
assert job_payload_bytes_max < command_bytes_max and job_result_bytes_max < command_bytes_max
assert job_claim_payload_bytes_max + 64 * KIB < frame_bytes_max, "a claim answer fits a frame"
assert job_claim_jobs_max <= job_session_jobs_max <= msgpack_array_len_max
assert job_complete_batch_max <= msgpack_array_len_max
assert job_enqueue_batch_max <= job_queue_jobs_max
assert 1 <= job_attempts_default <= job_attempts_max
assert job_schedule_catch_up_slots_max <= job_enqueue_batch_max
assert job_dlq_batch_max <= job_list_scan_max, "a list page can fill with jobs of its state"
assert resp_bulk_bytes_max >= value_bytes_max > key_bytes_max, "a RESP argument carries any key or value"
assert resp_length_line_bytes_max >= len(str(-(2**63))), "any int64 length line fits"
assert 1 + len(str(resp_bulk_bytes_max)) + 4 <= resp_arg_framing_bytes_max, "$<len> CRLF ... CRLF"
assert (resp_inline_bytes_max + 1) // 2 <= resp_command_args_max, "an inline line cannot carry more arguments"
assert resp_inline_bytes_max <= resp_command_bytes_max
assert resp_buffer_bytes_max < frame_bytes_max, "a RESP connection holds no more than a native one"
