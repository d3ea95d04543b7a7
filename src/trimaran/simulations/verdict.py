"""The checks at the end of a run: auth, liveness, durability, replica agreement, chat,
linearizability.

Raft's invariants and exactly-once are checked continuously while the run goes (see
:mod:`trimaran.simulations.loop`); these need the whole run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trimaran.simulations.auth_edge import check_auth
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.jobs_check import check_jobs
from trimaran.simulations.history import Operation, OpStatus
from trimaran.simulations.kv_model import KvKeyModel, error_output, normalize
from trimaran.simulations.linearizability import Outcome, check

if TYPE_CHECKING:
    from trimaran.simulations.loop import Simulation

#: The services whose whole state must agree on replicas at equal applied indexes.
#: Lines of a linearizability report kept in a failure message.
REPORT_LINES_MAX = 40
#: Search budget per key; a run whose search runs out is reported, never passed silently.
STATES_PER_KEY_MAX = 2_000_000


def final_checks(sim: Simulation) -> None:
    """Raise :class:`CheckFailure` for the first end-of-run property that does not hold."""
    # Raft's invariants ran after every Ready; once more over every live node, together.
    sim.invariants.check((n, slot.sim.replica.raft) for n, slot in sim.slots.items() if slot.sim.up)
    # A safety property first: a run that also stalls reports the token served after its revocation.
    check_auth(sim.auth_record)
    check_liveness(sim)
    check_durability(sim)
    check_replicas_agree(sim)
    check_jobs(sim)
    sim.chat.check()
    check_linearizable(sim)


def check_liveness(sim: Simulation) -> None:
    config = sim.config
    if sim.leader_ok_us < 0:
        raise CheckFailure("liveness", "no functional leader after the heal")
    pending = [c.index for c in sim.clients if not c.stopped]
    if pending:
        raise CheckFailure("liveness", f"clients {pending} still had operations pending at the end")
    if sim.final_reader is None or not sim.final_reader.done:
        raise CheckFailure("liveness", "the final reads were not answered before the end")
    if sim.lagging:
        behind = ", ".join(f"node {n} at {a}" for n, a in sim.lagging)
        raise CheckFailure("liveness", f"members never caught up with the leader's commit {sim.converge_target}: {behind}")
    late = config.heal_us + config.liveness_us
    for client in sim.clients:
        for op_id, at_us in client.gave_up_at:
            if at_us > late:
                op = sim.history.operations[op_id]
                raise CheckFailure("liveness", f"client {client.index} gave up after the heal: {op.describe()}")


def check_durability(sim: Simulation) -> None:
    """Every acknowledged write is in the final leader's committed log, as it was applied."""
    leader = sim.leader()
    assert leader is not None, "a run that ends with its final reads done has a leader"
    log = sim.slots[leader].sim.replica.raft.log
    for client in sim.clients:
        for client_id, seq in client.acked_writes:
            index, _pos = sim.exactly_once.position[(client_id, seq)]
            applied_term = sim.invariants.applied[index][0]
            if index > log.commit_index or (index > log.offset_index and log.term_at(index) != applied_term):
                raise CheckFailure(
                    "durability",
                    f"acknowledged write (client {client_id}, seq {seq}) applied at entry {index} term {applied_term}"
                    f" is not in leader {leader}'s committed log (commit {log.commit_index})",
                )


def check_replicas_agree(sim: Simulation) -> None:
    """Replicas that applied the same prefix hold the same state in every service: the whole
    snapshot of each (KV: values, revisions, expiry, LRU order, watch window; auth: keys,
    retirements, revocations, generation; jobs: jobs, queues, sessions, schedules, unique keys;
    chat: history, epochs, presence sessions and members, events window)."""
    by_index: dict[int, tuple[int, dict[str, object]]] = {}
    for node_id, slot in sim.slots.items():
        if not slot.sim.up:
            continue
        replica = slot.sim.replica
        data = {name: service.snapshot() for name, service in replica.services.items()}
        seen = by_index.setdefault(replica.applied_index, (node_id, data))
        if seen[1] != data:
            which = next(name for name in data if seen[1].get(name) != data[name])
            raise CheckFailure(
                "replicas_diverge",
                f"nodes {seen[0]} and {node_id} applied through {replica.applied_index} but hold different {which} state",
            )


def resolved_operations(sim: Simulation) -> list[Operation]:
    """The history with each indeterminate write resolved by what the cluster did with it.

    A client that gave up cannot know whether its write took effect; the simulator can. A write
    first applied (anywhere) at time t took effect within [invoke, t], with the outcome applied; a
    write never applied by the end of a run that converged never took effect. Resolving only
    narrows the linearizations the checker may choose, so it can hide no violation of the client's
    view; it keeps the search small when long outages leave many writes unresolved (each open
    write may otherwise be placed anywhere after its invocation).
    """
    commands: dict[int, tuple[int, int]] = {}
    for client in sim.clients:
        commands.update(client.commands)
    out = []
    for op in sim.history:
        command = commands.get(op.op_id)
        if op.status is not OpStatus.INDETERMINATE or command is None:
            out.append(op)
            continue
        applied = sim.exactly_once.first_applied.get(command)
        if applied is None:
            out.append(Operation(op.op_id, op.client_id, op.key, op.kind, op.args, op.invoke_time, op.complete_time, OpStatus.FAILED))
            continue
        at_us, (status, value) = applied
        result = normalize(value) if status == "ok" else error_output(value["code"], value["details"])
        if status != "ok" and result is None:
            # Applied, but refused before the service looked (a full session table): no effect.
            out.append(Operation(op.op_id, op.client_id, op.key, op.kind, op.args, op.invoke_time, op.complete_time, OpStatus.FAILED))
            continue
        out.append(Operation(op.op_id, op.client_id, op.key, op.kind, op.args, op.invoke_time, max(at_us, op.invoke_time), OpStatus.OK, result))
    return out


def check_linearizable(sim: Simulation) -> None:
    sim.history.finalize()
    result = check(resolved_operations(sim), KvKeyModel(sim.log_clock), STATES_PER_KEY_MAX)
    sim.linearizability_states = result.states_explored
    if result.outcome is Outcome.OK:
        return
    lines = result.explain().splitlines()
    if len(lines) > REPORT_LINES_MAX:
        lines = lines[: REPORT_LINES_MAX // 2] + ["  ..."] + lines[-REPORT_LINES_MAX // 2 :]
    category = "linearizability" if result.outcome is Outcome.VIOLATION else "linearizability_unknown"
    raise CheckFailure(category, "\n".join(lines))
