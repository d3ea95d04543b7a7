"""The ``trimaran`` command line: parses arguments and calls into the package; no logic of its own.

Each command group lives in its own section below; keep sections independent.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trimaran")
def main() -> None:
    """trimaran: a Raft-replicated KV cache, job queue and chat pub/sub on trio."""


# === simulate (trimaran.simulations) ============================================================


# === cluster and node (trimaran.node) ===========================================================


# === client commands (trimaran.client) ===========================================================
# Imports of trimaran.client stay inside the commands: `trimaran --help` must not pay for trio.
from typing import Any  # noqa: E402

_DEFAULT_ENDPOINTS = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"  # where `trimaran up` listens
_ENDPOINTS_HELP = "Comma-separated HOST:PORT client addresses [env TRIMARAN_ENDPOINTS; default: the `trimaran up` ports]."


def _client_options(default_timeout_ms: int) -> Any:
    """--endpoints, --cluster-id, --token, --timeout-ms and --json, shared by every client command."""

    def decorate(fn: Any) -> Any:
        options = [
            click.option("--endpoints", envvar="TRIMARAN_ENDPOINTS", default=_DEFAULT_ENDPOINTS, help=_ENDPOINTS_HELP),
            click.option(
                "--cluster-id", envvar="TRIMARAN_CLUSTER_ID", help="Refuse nodes of any other cluster [env TRIMARAN_CLUSTER_ID]."
            ),
            click.option("--token", envvar="TRIMARAN_TOKEN", help="Auth token for the handshake [env TRIMARAN_TOKEN]."),
            click.option(
                "--timeout-ms",
                type=click.IntRange(min=1),
                default=default_timeout_ms,
                show_default=True,
                help="Deadline of the command, retries included.",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text."),
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _client_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a client call; a trimaran error becomes one line on stderr and exit status 1."""
    from trimaran.errors import TrimaranError

    try:
        return fn(*args, **kwargs)
    except TrimaranError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}".splitlines()[0]) from None


@main.command("status")
@_client_options(default_timeout_ms=2_000)
def status_command(endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool) -> None:
    """Members, leader, term, commit and applied index, and lag of every node.

    Asks each endpoint (and each member it learns of) for its own status; a node that does not
    answer within --timeout-ms is shown as down. Exit status 1 if no leader is known.
    """
    import json

    from trimaran.client.commands import cluster_status

    status = _client_call(cluster_status, endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms)
    click.echo(json.dumps(status.to_json(), indent=2) if as_json else status.format_table())
    if status.leader_id is None:
        raise click.ClickException("no leader: the cluster cannot serve writes right now")


@main.group("kv")
def kv_group() -> None:
    """Read and write keys (the register service, until the KV cache replaces it)."""


@kv_group.command("get")
@click.argument("key")
@click.option(
    "--consistency",
    type=click.Choice(["linearizable", "lease", "stale"]),
    default="linearizable",
    show_default=True,
    help="Read consistency.",
)
@_client_options(default_timeout_ms=5_000)
def kv_get_command(
    key: str, consistency: str, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool
) -> None:
    """Print the value of KEY (exit status 1 if it is absent)."""
    import json

    from trimaran.client.commands import register_call, value_to_json

    value = _client_call(
        register_call, endpoints, "get", key, consistency, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms
    )
    if as_json:
        click.echo(json.dumps({"key": key, **value_to_json(value)}))
    elif value is not None:
        click.echo(value)  # bytes go to stdout as they are
    if value is None:
        raise click.ClickException(f"key not found: {key}")


@kv_group.command("set")
@click.argument("key")
@click.argument("value")
@_client_options(default_timeout_ms=5_000)
def kv_set_command(
    key: str, value: str, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool
) -> None:
    """Set KEY to VALUE; returns once the write is committed on a majority."""
    import json

    from trimaran.client.commands import register_call

    _client_call(
        register_call, endpoints, "set", key, value, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms
    )
    click.echo(json.dumps({"key": key, "ok": True}) if as_json else "OK")


@kv_group.command("del")
@click.argument("key")
@_client_options(default_timeout_ms=5_000)
def kv_del_command(
    key: str, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool
) -> None:
    """Delete KEY; prints whether it existed."""
    import json

    from trimaran.client.commands import register_call

    existed = _client_call(
        register_call, endpoints, "delete", key, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms
    )
    click.echo(json.dumps({"key": key, "deleted": existed}) if as_json else ("deleted" if existed else "not found"))


if __name__ == "__main__":
    main()
