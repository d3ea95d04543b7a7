"""The planted bugs the simulator must catch, and the seeds known to catch each (the CI matrix).

The switches live in the core (``RaftConfig.mutants``, ``ReplicaConfig.mutants``, the KV, auth,
jobs and chat services' ``mutants``, the chat feed's), or, for a bug of the edge or the client, in
the simulator's twin of it (:data:`~trimaran.simulations.chat_edge.CHAT_EDGE_MUTANTS`); this module
only names them for the command line and records, per mutant, a small run that its checkers are
known to fail (``tests/simulations/test_mutants.py`` replays each, and the same run without the
mutant, which must pass).
"""

from __future__ import annotations

from dataclasses import dataclass

from trimaran.cluster.raft import MUTANTS
from trimaran.cluster.replica import REPLICA_MUTANTS
from trimaran.services.auth import AUTH_MUTANTS
from trimaran.services.chat import CHAT_MUTANTS
from trimaran.services.chat.feed import FEED_MUTANTS
from trimaran.services.jobs import JOBS_MUTANTS
from trimaran.services.kv import KV_MUTANTS
from trimaran.simulations.chat_edge import CHAT_EDGE_MUTANTS

#: Chat service mutants no subscriber can see, so the simulator does not plant them: the feed
#: (:mod:`trimaran.services.chat.feed`) reads history after its last offset and takes only the
#: offset after it, so a history page that starts one early, or one late while saying it
#: recovered, is never sent on (the late one only delays a true ``recovered: false``). The chat
#: service's own tests catch both (tests/services/test_chat.py).
CHAT_MUTANTS_UNSEEN = ("resume_off_by_one", "recovered_off_by_one")


def all_mutants() -> dict[str, str]:
    """Every mutant name the simulator plants, with what it breaks, Raft's first."""
    chat = {name: text for name, text in CHAT_MUTANTS.items() if name not in CHAT_MUTANTS_UNSEEN}
    return {**MUTANTS, **REPLICA_MUTANTS, **KV_MUTANTS, **AUTH_MUTANTS, **JOBS_MUTANTS, **chat, **FEED_MUTANTS, **CHAT_EDGE_MUTANTS}


@dataclass(frozen=True, slots=True)
class MatrixCase:
    """A run a mutant is known to fail (and the core without it passes)."""

    mutant: str
    seed: int
    nodes: int
    sim_seconds: float
    #: The checker that fails it.
    category: str
    #: False: found with the direct rule checks off (the end-to-end checkers alone catch it).
    rules: bool = True
    #: A fault plan to replay instead of the seed's own (``""``: the seed's): for a bug that needs
    #: a rare sequence of faults, the shrunk plan of the sweep seed that found it.
    plan: str = ""
    #: False: a plan recorded before the jobs workload joined every run, replayed without it (its
    #: producers and workers shift every event after their first command).
    jobs_workload: bool = True


#: The first seed catching each mutant in seeds 1..500 (5 nodes, 40 simulated seconds), from
#: :func:`first_catch`. ``rules=False``: the end-to-end checkers (invariants, linearizability,
#: exactly-once, liveness) catch it on their own; ``rules=True``: found with the rule checks on.
#: Regenerate after a change to the core or the simulator shifts them:
#: ``first_catch(name, range(1, 501), rules=...)``.
#: The jobs and chat workloads run in every seed, so a change to either shifts the seeds too.
MATRIX: tuple[MatrixCase, ...] = (
    MatrixCase("vote_not_persisted", 1, 5, 40.0, "rule"),
    MatrixCase("no_up_to_date_check", 5, 5, 40.0, "invariant", rules=False),
    MatrixCase("commit_old_term", 58, 5, 40.0, "rule"),
    MatrixCase("ack_before_fsync", 1, 5, 40.0, "rule"),
    # A follower acknowledged entries its crash then lost: the leader (sure it holds them) and it
    # bounce appends and rejections until the event-rate alarm fires.
    MatrixCase("ack_before_fsync", 113, 5, 40.0, "storm", rules=False),
    MatrixCase("leader_counts_unpersisted", 1, 5, 40.0, "rule"),
    MatrixCase("accept_stale_term", 5, 5, 40.0, "rule"),
    MatrixCase("no_prev_term_check", 33, 5, 40.0, "exactly_once", rules=False),
    MatrixCase("heartbeat_commit_unbounded", 1, 5, 40.0, "exactly_once", rules=False),
    MatrixCase("no_noop_on_election", 131, 5, 40.0, "rule"),
    MatrixCase("no_noop_on_election", 154, 5, 40.0, "linearizability", rules=False),
    MatrixCase("read_without_read_index", 130, 5, 40.0, "rule"),
    # A deposed leader must serve a read between losing its majority and noticing (Check-Quorum):
    # rare; the first catch in seeds 1..1000 at 60 simulated seconds.
    MatrixCase("read_without_read_index", 271, 5, 60.0, "linearizability", rules=False),
    MatrixCase("conf_change_before_term_commit", 4, 5, 40.0, "rule"),
    MatrixCase("vote_twice_in_term", 46, 5, 40.0, "invariant", rules=False),
    MatrixCase("dedup_not_in_snapshot", 36, 5, 40.0, "exactly_once", rules=False),
    MatrixCase("ttl_local_clock", 2, 5, 40.0, "replicas_diverge", rules=False),
    MatrixCase("eviction_per_replica", 2, 5, 40.0, "replicas_diverge", rules=False),
    # A client's next request on a live connection after its token's revocation was applied there.
    MatrixCase("revocation_stale_state", 1, 5, 40.0, "auth", rules=False),
    # The same after a key's retirement (the admin retires a key some clients' tokens rest on).
    MatrixCase("retirement_stale_state", 5, 5, 40.0, "auth", rules=False),
    # A node restarted after applying a revocation (its commit index not yet on disk) serves the
    # token again: rare (a crash inside that window, then the holder back on that node before it
    # catches up), so at 60 simulated seconds.
    MatrixCase("restart_forgets_revocations", 431, 5, 60.0, "auth", rules=False),
    # The job queue (issue 10), end-to-end: the jobs model (simulations/jobs_check.py) or the
    # replicas' per-entry queue fingerprints. A late completion from a lapsed session's worker:
    MatrixCase("ack_without_fencing", 35, 5, 20.0, "jobs", rules=False),
    # A claim that takes a priority-0 job before a priority-1 one.
    MatrixCase("claim_ignores_priority", 1, 5, 20.0, "jobs", rules=False),
    # A retried job claimed as attempt 1 again.
    MatrixCase("retry_forgets_attempts", 3, 5, 20.0, "jobs", rules=False),
    # A dead job missing from the most advanced replica at the end (the no-loss check).
    MatrixCase("dead_letter_dropped", 1, 5, 20.0, "jobs", rules=False),
    # A replica whose clock runs ahead lapses leases and sessions at other entries than the others
    # (their whole queue states differ at the end).
    MatrixCase("lease_local_clock", 1, 5, 20.0, "replicas_diverge", rules=False),
    # A replica whose clock runs ahead fires a schedule slot at another entry (and before its time).
    MatrixCase("schedule_local_clock", 1, 5, 20.0, "replicas_diverge", rules=False),
    # Found by a sweep of seeds 100001..100600 (issue 15): a leader appends its own removal inside a
    # partition and steps down before the entry spreads; with one disk failed, only it can carry
    # the change. The shrunk plan of that seed, six faults.
    MatrixCase(
        "removed_never_campaigns",
        100436,
        5,
        60.0,
        "liveness",
        rules=False,
        plan="loss_pm=0,dup_pm=0,delay_us=1287,jitter_us=0,tail_pm=0,tail_us=0,fsync_us=12433,fsync_jitter_us=0,"
        "drift_pm=0/0/0/0/0,snap_every=24,snap_keep=16,append_bytes=16384,inflight=32;1799:part:2:20:1270,"
        "3307:crash:0:0:0:0,11020:disk:2:31:436023196,13353:member:3:2:834627752,25312:part:0:32:1216,"
        "25731:member:0:1:723693672",
        jobs_workload=False,
    ),
    # Chat (issue 11), each caught by the chat checkers (simulations/chat_edge.py) or replica
    # agreement. A hub that pushes what its node only appended: a subscriber is sent a message no
    # replica has applied.
    MatrixCase("push_before_commit", 1, 5, 40.0, "chat_uncommitted", rules=False),
    # Offsets by the history's length once retention trims it: one offset names two messages.
    MatrixCase("offset_from_length", 1, 5, 40.0, "chat_history", rules=False),
    # A resume that takes since as the first offset wanted: the subscriber gets its last one again.
    MatrixCase("resume_from_since", 1, 5, 40.0, "chat_delivery", rules=False),
    # A publish retried after a timeout with a new seq: one publish at two offsets.
    MatrixCase("publish_retry_new_seq", 4, 5, 40.0, "chat_history", rules=False),
    MatrixCase("ephemeral_takes_offset", 4, 5, 40.0, "chat_delivery", rules=False),
    MatrixCase("epoch_kept_on_reset", 14, 5, 40.0, "chat_history", rules=False),
    MatrixCase("presence_local_clock", 2, 5, 40.0, "replicas_diverge", rules=False),
)

#: Mutants the end-to-end checkers alone did not catch in seeds 1..500 (5 nodes, 60 simulated
#: seconds, ``--no-rules``), with what it takes; the rule checks catch each within 60 seeds.
END_TO_END_MISSES: dict[str, str] = {
    "vote_not_persisted": "the voter must crash inside the vote's fsync window and a second "
    "candidate of the same term must reach it after it restarts",
    "commit_old_term": "an old-term entry must be acknowledged apart from the no-op (a split "
    "append) and then be overwritten by a leader elected without it (Figure 8)",
    "leader_counts_unpersisted": "the leader's own fsync must be slower than two followers' "
    "round trips, and it must crash before it lands while the other followers lack the entry",
    "accept_stale_term": "the stale append must truncate an entry committed elsewhere, and that "
    "follower must then apply or lead before the current leader repairs it",
    "conf_change_before_term_commit": "two uncommitted removals must leave the leader a majority "
    "of the new configuration while a partition lets the rest elect under the old one",
}


def first_catch(
    mutant: str, seeds: range, nodes: int = 5, sim_seconds: float = 40.0, rules: bool = True
) -> MatrixCase | None:
    """The first seed in ``seeds`` whose run fails with ``mutant`` planted (how MATRIX is made)."""
    from trimaran.simulations.run import run_seed  # run imports the loop; keep this module light

    for seed in seeds:
        result = run_seed(seed, nodes, sim_seconds, (mutant,), rules=rules)
        if not result.passed:
            return MatrixCase(mutant, seed, nodes, sim_seconds, result.category, rules)
    return None
