"""The ``trimaran`` command line: parses arguments and calls into the package; no logic of its own.

This module holds the ``main`` group, the options and helpers every group shares, and the
registration of the groups, each a module of this package that registers on ``main`` when
imported at the end of this file: simulate; node (up, node run); status; kv; chat; jobs (jobs,
worker); auth; certs; members (member, leader); snapshot. Keep groups independent of each other.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trimaran")
def main() -> None:
    """trimaran: a Raft-replicated KV cache, job queue and chat pub/sub on trio."""


# === shared by the node commands (up, node run, certs) and the worker ============================


def _node_error(exc: BaseException) -> click.ClickException:
    """One clear line for an error that stopped a node or the local cluster."""
    from trimaran.errors import TrimaranError

    if isinstance(exc, TrimaranError):
        return click.ClickException(f"{exc.code}: {exc.message}".splitlines()[0])
    if isinstance(exc, OSError):
        return click.ClickException(f"{exc.strerror or exc}".splitlines()[0] + (f": {exc.filename}" if exc.filename else ""))
    return click.ClickException(f"{type(exc).__name__}: {exc}".splitlines()[0])


def _log_level_option(help_text: str, **extra: Any) -> Any:
    """--log-level, shared by `up`, `node run` and `worker`."""
    return click.option(
        "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True, help=help_text, **extra
    )


# === client commands (trimaran.client) ===========================================================
# Imports of trimaran.client stay inside the commands: `trimaran --help` must not pay for trio.

#: Where `trimaran up` listens: the client library's DEFAULT_ENDPOINTS, written out so that the CLI
#: starts without importing the client (tests/client/test_client.py holds the two equal).
_DEFAULT_ENDPOINTS = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
_ENDPOINTS_HELP = "Comma-separated HOST:PORT client addresses [env TRIMARAN_ENDPOINTS; default: the `trimaran up` ports]."


def _check_endpoints(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A malformed endpoint is a usage mistake (exit status 2, like click's own), not a runtime failure."""
    from trimaran.client.connection import parse_endpoints
    from trimaran.errors import InvalidArgument

    try:
        parse_endpoints(value)
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message, ctx=ctx, param=param) from None
    return value


def _use_ca_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """--ca-file is the flag form of TRIMARAN_CA_FILE, which every client of this process reads."""
    import os

    if value:
        os.environ["TRIMARAN_CA_FILE"] = value


#: --ca-file of every command that connects as a client (the worker's too).
ca_file_option = click.option(
    "--ca-file",
    envvar="TRIMARAN_CA_FILE",
    type=click.Path(exists=True, dir_okay=False),
    expose_value=False,
    callback=_use_ca_file,
    help="Connect with TLS, verifying the nodes against this CA certificate (the ca.pem of "
    "`trimaran certs init`) [env TRIMARAN_CA_FILE; default: plain TCP].",
)


@dataclasses.dataclass(frozen=True, slots=True)
class ClientArgs:
    """What a client command's shared options say (--endpoints, --cluster-id, --token,
    --timeout-ms), handed to it as one ``client`` argument by :func:`_client_options`."""

    endpoints: str
    cluster_id: str | None
    token: str | None
    timeout_ms: int

    def call_options(self) -> dict[str, Any]:
        """The keyword arguments of the client's one-call helpers (all but the endpoints)."""
        return {"cluster_id": self.cluster_id, "token": self.token, "timeout_ms": self.timeout_ms}

    def with_timeout(self, timeout_ms: int) -> ClientArgs:
        return dataclasses.replace(self, timeout_ms=timeout_ms)


def _client_options(default_timeout_ms: int) -> Any:
    """--endpoints, --cluster-id, --token, --timeout-ms and --json, shared by every client command:
    the command gets the first four as one ``client: ClientArgs`` argument, and ``as_json``."""

    def decorate(fn: Any) -> Any:
        @functools.wraps(fn)
        def command(*args: Any, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, **kwargs: Any) -> Any:
            return fn(*args, client=ClientArgs(endpoints, cluster_id, token, timeout_ms), **kwargs)

        options = [
            click.option(
                "--endpoints",
                envvar="TRIMARAN_ENDPOINTS",
                default=_DEFAULT_ENDPOINTS,
                callback=_check_endpoints,
                help=_ENDPOINTS_HELP,
            ),
            click.option(
                "--cluster-id", envvar="TRIMARAN_CLUSTER_ID", help="Refuse nodes of any other cluster [env TRIMARAN_CLUSTER_ID]."
            ),
            click.option("--token", envvar="TRIMARAN_TOKEN", help="Auth token for the handshake [env TRIMARAN_TOKEN]."),
            ca_file_option,
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
            command = option(command)
        return command

    return decorate


def _client_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a client call; a trimaran error becomes one line on stderr and exit status 1."""
    from trimaran.errors import TrimaranError

    try:
        return fn(*args, **kwargs)
    except TrimaranError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}".splitlines()[0]) from None


def _none_found(what: str, as_json: bool) -> None:
    """Say that a list command found nothing, as ``what`` (text mode only, on stderr like the
    "more:" hint): an empty answer and an answer that never came look alike otherwise, and stdout
    stays empty for a script that counts lines."""
    if not as_json:
        click.echo(what, err=True)


def _stream_lines(
    follow: Any, endpoints: str, name: str, *, line: Any, to_json: Any, as_json: bool, **options: Any
) -> None:
    """Run ``follow(endpoints, name, show, **options)`` (a watch or a subscription), printing each
    item it hands ``show`` as a line (or a JSON line); Ctrl-C, how such a command ends, exits 130
    without a traceback."""
    import json

    def show(item: Any) -> None:
        click.echo(json.dumps(to_json(item)) if as_json else line(item))

    try:
        _client_call(follow, endpoints, name, show, **options)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _service(service: str, client: ClientArgs, method: str, *args: Any, **options: Any) -> Any:
    """One ``c.<service>`` call with the shared client options; errors become one line and exit 1."""
    from trimaran.client.commands import service_call

    return _client_call(service_call, client.endpoints, service, method, *args, options=options, **client.call_options())


# === registration: each module's groups register on `main` as it is imported ====================

from trimaran.cli import auth as _auth  # noqa: E402,F401
from trimaran.cli import certs as _certs  # noqa: E402,F401
from trimaran.cli import chat as _chat  # noqa: E402,F401
from trimaran.cli import jobs as _jobs  # noqa: E402,F401
from trimaran.cli import kv as _kv_commands  # noqa: E402,F401
from trimaran.cli import members as _members  # noqa: E402,F401
from trimaran.cli import node as _node  # noqa: E402,F401
from trimaran.cli import simulate as _simulate  # noqa: E402,F401
from trimaran.cli import snapshot as _snapshot  # noqa: E402,F401
from trimaran.cli import status as _status  # noqa: E402,F401

if __name__ == "__main__":
    main()
