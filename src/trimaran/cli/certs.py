"""``trimaran certs init|issue``: the cluster CA and node certificates (trimaran.node.tls)."""

from __future__ import annotations

from typing import Any

import click

from trimaran.cli import _node_error, main


@main.group("certs")
def certs_group() -> None:
    """Make a cluster CA and node certificates for TLS (`node run --tls-dir`, clients' --ca-file)."""


def _hosts_option(fn: Any) -> Any:
    return click.option(
        "--host",
        "hosts",
        multiple=True,
        metavar="NAME|IP",
        help="A name or IP address clients dial the nodes by; repeat. Default: localhost, 127.0.0.1, ::1.",
    )(fn)


def _print_written(paths: list[Any], as_json: bool) -> None:
    import json

    if as_json:
        click.echo(json.dumps({"written": [str(p) for p in paths]}))
    else:
        for path in paths:
            click.echo(f"wrote {path}")


@certs_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--nodes", type=click.IntRange(1, 1000), default=3, show_default=True, help="Certificates for node 1..N.")
@_hosts_option
@click.option("--cluster-id", default="trimaran", show_default=True, help="Named in the CA's subject.")
@click.option("--valid-days", type=click.IntRange(1, 3650), default=825, show_default=True, help="Node certificates' validity.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def certs_init_command(directory: str, nodes: int, hosts: tuple[str, ...], cluster_id: str, valid_days: int, as_json: bool) -> None:
    """Make a cluster CA (ca.pem, ca-key.pem) and node-<id>.pem / node-<id>-key.pem for each node in
    DIRECTORY. Private keys are mode 0600; nothing is overwritten. Give each node the directory (or
    its own certificate, its key and ca.pem) and clients ca.pem."""
    from trimaran.node.tls import DEFAULT_HOSTS, init_certs

    try:
        written = init_certs(directory, range(1, nodes + 1), hosts=hosts or DEFAULT_HOSTS, cluster_id=cluster_id, valid_days=valid_days)
    except Exception as exc:
        raise _node_error(exc) from None
    _print_written(written, as_json)


@certs_group.command("issue")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--node", "node_id", type=click.IntRange(min=1), required=True, help="The new node's id.")
@_hosts_option
@click.option("--valid-days", type=click.IntRange(1, 3650), default=825, show_default=True, help="The certificate's validity.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def certs_issue_command(directory: str, node_id: int, hosts: tuple[str, ...], valid_days: int, as_json: bool) -> None:
    """Sign a certificate for one more node with the CA in DIRECTORY (needs ca-key.pem)."""
    from trimaran.node.tls import DEFAULT_HOSTS, issue_cert

    try:
        written = issue_cert(directory, node_id, hosts=hosts or DEFAULT_HOSTS, valid_days=valid_days)
    except Exception as exc:
        raise _node_error(exc) from None
    _print_written(written, as_json)
