"""``trimaran member list|add|promote|remove`` and ``trimaran leader transfer``."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable

import click

from trimaran.cli import ClientArgs, _client_options, _service, main
from trimaran.cli.progress import ProgressBar


@main.group("member")
def member_group() -> None:
    """The cluster's members: list them, add a node (as a learner, then a voter once it caught
    up), promote a learner, remove a node. Changes need an admin:* token; the leader refuses the
    ones that would lose quorum or availability (removing itself, a voter of a 2-voter cluster,
    promoting a node that has not caught up, a change while another is pending) unless --force
    is given where that is allowed. Each change prints the failure tolerance before and after.
    """


@main.group("leader")
def leader_group() -> None:
    """Leadership: hand it to another voter."""


def _tolerance(voters: int) -> int:
    from trimaran.client.members import failure_tolerance

    return failure_tolerance(voters)


def _report(before: list[Any], after: dict[str, Any], as_json: bool, what: str) -> None:
    voters_before = sum(1 for m in before if m.role in ("leader", "voter"))
    voters_after = len(after["voters"])
    if as_json:
        click.echo(json.dumps(after | {"tolerance_before": _tolerance(voters_before), "tolerance_after": _tolerance(voters_after)}))
        return
    click.echo(f"{what}: voters {after['voters']}" + (f", learners {after['learners']}" if after["learners"] else ""))
    click.echo(
        f"failure tolerance: {_tolerance(voters_before)} -> {_tolerance(voters_after)} "
        f"(voters {voters_before} -> {voters_after})"
    )


@member_group.command("list")
@_client_options(default_timeout_ms=5_000)
def member_list_command(client: ClientArgs, as_json: bool) -> None:
    """Every member as the leader sees it: role, addresses, match index, lag, and whether it answers."""
    members = _service("members", client, "list")
    voters = sum(1 for m in members if m.role in ("leader", "voter"))
    if as_json:
        click.echo(json.dumps({"members": [dataclasses.asdict(m) for m in members], "failure_tolerance": _tolerance(voters)}))
        return
    click.echo(f"{'id':>3}  {'role':<8} {'client':<22} {'peer':<22} {'match':>8} {'lag':>6}  health")
    for m in members:
        health = "ok" if m.active else "not answering"
        click.echo(
            f"{m.node_id:>3}  {m.role:<8} {m.client_address or '-':<22} {m.peer_address or '-':<22} "
            f"{m.match_index:>8} {m.lag:>6}  {health}"
        )
    click.echo(f"failure tolerance: {_tolerance(voters)} of {voters} voters may fail")


#: After this long with nothing replicated to a node being added, its bar says the node may not run
#: (the leader would otherwise wait the whole --catch-up-timeout-s, 300 s, at 0 without a word).
SILENT_NODE_HINT_S = 10.0


def catch_up_counts(node_id: int, peer_address: str | None, clock: Callable[[], float] = time.monotonic) -> Callable[[int, int], str]:
    """The numbers after the catch-up bar: "MATCH/LAST", and a hint once the node acknowledged nothing
    for a while (a learner installing a snapshot shows no progress either, then jumps)."""
    started = clock()

    def counts(match: int, last: int) -> str:
        if match == 0 and clock() - started >= SILENT_NODE_HINT_S:
            where = f" at {peer_address}" if peer_address else ""
            return f"{match}/{last} (node {node_id} acknowledged nothing yet: installing a snapshot, or not running{where}?)"
        return f"{match}/{last}"

    return counts


@member_group.command("add")
@click.argument("node_id", type=click.IntRange(min=1))
@click.option("--peer-address", metavar="HOST:PORT", help="Where the new node's peer port listens (its --peer-listen).")
@click.option("--client-address", metavar="HOST:PORT", help="Where its client port listens (its --listen).")
@click.option("--voter", is_flag=True, help="Wait until it has caught up (a progress bar), then promote it to voter.")
@click.option(
    "--catch-up-timeout-s", type=click.FloatRange(min=1), default=300.0, show_default=True,
    help="With --voter: how long the new node may take to catch up before the promotion is given up.",
)
@_client_options(default_timeout_ms=10_000)
def member_add_command(
    node_id: int,
    peer_address: str | None,
    client_address: str | None,
    voter: bool,
    catch_up_timeout_s: float,
    client: ClientArgs,
    as_json: bool,
) -> None:
    """Add NODE_ID, started with `trimaran node run --join ...`, as a learner (and with --voter,
    as a voter once caught up). Give its addresses unless every member has it in its --peer flags."""
    if client_address and not peer_address:
        raise click.UsageError("--client-address needs --peer-address")
    before = _service("members", client, "list")
    bar = ProgressBar("catching up ", catch_up_counts(node_id, peer_address))
    try:
        after = _service(
            "members", client.with_timeout(client.timeout_ms + int(catch_up_timeout_s * 1000)), "add", node_id,
            peer_address, client_address, voter=voter, catch_up_timeout_s=catch_up_timeout_s,
            progress=None if as_json else bar,
        )  # fmt: skip
    finally:
        bar.end()
    _report(before, after, as_json, f"added node {node_id}")


@member_group.command("promote")
@click.argument("node_id", type=click.IntRange(min=1))
@_client_options(default_timeout_ms=10_000)
def member_promote_command(node_id: int, client: ClientArgs, as_json: bool) -> None:
    """Make learner NODE_ID a voter (refused until it has caught up)."""
    before = _service("members", client, "list")
    after = _service("members", client, "promote", node_id)
    _report(before, after, as_json, f"promoted node {node_id}")


@member_group.command("remove")
@click.argument("node_id", type=click.IntRange(min=1))
@click.option("--force", is_flag=True, help="Remove even the leader, or a voter of a 2-voter cluster.")
@_client_options(default_timeout_ms=10_000)
def member_remove_command(
    node_id: int, force: bool, client: ClientArgs, as_json: bool
) -> None:
    """Take NODE_ID out of the cluster (stop its process afterwards)."""
    before = _service("members", client, "list")
    after = _service("members", client, "remove", node_id, force=force)
    _report(before, after, as_json, f"removed node {node_id}")


@leader_group.command("transfer")
@click.option("--to", "to", type=click.IntRange(min=1), help="The voter to hand leadership to [default: the most caught-up].")
@_client_options(default_timeout_ms=10_000)
def leader_transfer_command(to: int | None, client: ClientArgs, as_json: bool) -> None:
    """Hand leadership to another voter (e.g. before stopping or removing the leader)."""
    target = _service("members", client, "transfer", to)
    click.echo(json.dumps({"to": target}) if as_json else f"leadership handed to node {target}")
