"""``trimaran status``: every node's view of the cluster (members, leader, term, indexes, lag)."""

from __future__ import annotations

import click

from trimaran.cli import ClientArgs, _client_call, _client_options, main


@main.command("status")
@_client_options(default_timeout_ms=2_000)
def status_command(client: ClientArgs, as_json: bool) -> None:
    """Members, leader, term, commit and applied index, and lag of every node.

    Asks each endpoint (and each member it learns of) for its own status; a node that does not
    answer within --timeout-ms is shown as down. Exit status 1 if no leader is known (or no node
    answered).
    """
    import json

    from trimaran.client.commands import cluster_status

    status = _client_call(cluster_status, client.endpoints, **client.call_options())
    click.echo(json.dumps(status.to_json(), indent=2) if as_json else status.format_table())
    refused = status.refused()
    if refused is not None:
        raise click.ClickException(f"{refused} (every node refused the token; the cluster itself may be fine)")
    if not any(node.up for node in status.nodes):  # not even a follower: "no leader" would mislead
        raise click.ClickException("no node answered: is the cluster running at --endpoints (and, for a TLS cluster, given --ca-file)?")
    if status.leader_id is None:
        raise click.ClickException("no leader: the cluster cannot serve writes right now")

