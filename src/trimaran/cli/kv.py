"""``trimaran kv get|set|del|incr|scan|watch|...``: the KV cache through the client (``c.kv``)."""

from __future__ import annotations

from typing import Any, BinaryIO

import click

from trimaran.cli import ClientArgs, _client_call, _client_options, _none_found, _service, _stream_lines, main


@main.group("kv")
def kv_group() -> None:
    """The KV cache: get, set, del, incr, scan and watch.

    Keys and values on the command line are text (sent as UTF-8); `set` also takes bytes from a
    file or standard input. Every write returns once it is committed on a majority and applied.
    """


_CONSISTENCY_OPTION = click.option(
    "--consistency",
    type=click.Choice(["linearizable", "lease", "stale"]),
    default="linearizable",
    show_default=True,
    help="Read consistency.",
)



def _kv(client: ClientArgs, method: str, *args: Any, **options: Any) -> Any:
    return _service("kv", client, method, *args, **options)


@kv_group.command("get")
@click.argument("key")
@_CONSISTENCY_OPTION
@_client_options(default_timeout_ms=5_000)
def kv_get_command(
    key: str, consistency: str, client: ClientArgs, as_json: bool
) -> None:
    """Print the value of KEY; exit status 1 if it is absent or expired.

    --json prints one JSON object: found, value, its revision and remaining TTL in milliseconds
    (null: no expiry); for an absent key {"found": false, ...}, still with exit status 1, and
    nothing on stderr.
    """
    import json

    from trimaran.client.commands import entry_to_json

    entry = _kv(client, "get", key, consistency)
    if as_json:
        click.echo(json.dumps(entry_to_json(key, entry)))
        if entry is None:
            raise SystemExit(1)
    elif entry is not None:
        click.echo(entry.value)  # bytes go to stdout as they are
    if entry is None:
        raise click.ClickException(f"key not found: {key}")


@kv_group.command("set")
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "--value-file",
    type=click.File("rb"),
    help="Read the value from this file ('-': standard input), as bytes; instead of VALUE.",
)
@click.option("--ttl-ms", type=click.IntRange(min=1), help="Expire the key this many milliseconds after the write.")
@click.option("--if-absent", is_flag=True, help="Only if KEY does not exist.")
@click.option("--if-revision", type=click.IntRange(min=0), help="Only if KEY's revision is this (0: absent).")
@_client_options(default_timeout_ms=5_000)
def kv_set_command(
    key: str,
    value: str | None,
    value_file: BinaryIO | None,
    ttl_ms: int | None,
    if_absent: bool,
    if_revision: int | None,
    client: ClientArgs,
    as_json: bool,
) -> None:
    """Set KEY to VALUE, or to the bytes of --value-file (VALUE '-' reads standard input), for values
    up to the 1 MiB limit that a shell argument cannot carry. A condition that does not hold exits 1
    (condition_failed), changing nothing."""
    import contextlib
    import json

    from trimaran import limits

    if value_file is not None and value is not None:
        raise click.UsageError("give VALUE or --value-file, not both")
    if value_file is None and value is None:
        raise click.UsageError("missing VALUE (or --value-file FILE, or '-' for standard input)")
    data: str | bytes
    if value_file is not None or value == "-":
        with click.open_file("-", "rb") if value_file is None else contextlib.nullcontext(value_file) as stream:
            data = stream.read(limits.value_bytes_max + 1)
        if len(data) > limits.value_bytes_max:
            raise click.UsageError(f"the value is over value_bytes_max ({limits.value_bytes_max} bytes)")
    else:
        assert value is not None
        data = value
    revision = _kv(
        client, "set", key, data, ttl_ms=ttl_ms, if_absent=if_absent, if_revision=if_revision
    )
    click.echo(json.dumps({"key": key, "ok": True, "revision": revision}) if as_json else "OK")


@kv_group.command("del")
@click.argument("key")
@click.option("--if-revision", type=click.IntRange(min=0), help="Only if KEY's revision is this.")
@_client_options(default_timeout_ms=5_000)
def kv_del_command(
    key: str, if_revision: int | None, client: ClientArgs, as_json: bool
) -> None:
    """Delete KEY; prints whether it existed."""
    import json

    existed = _kv(client, "delete", key, if_revision=if_revision)
    click.echo(json.dumps({"key": key, "deleted": existed}) if as_json else ("deleted" if existed else "not found"))


@kv_group.command("incr")
@click.argument("key")
@click.option("--by", "delta", type=int, default=1, show_default=True, help="Amount added (negative: subtract).")
@_client_options(default_timeout_ms=5_000)
def kv_incr_command(
    key: str, delta: int, client: ClientArgs, as_json: bool
) -> None:
    """Add to the integer stored under KEY (absent counts as 0); prints the new value."""
    import json

    value = _kv(client, "incr", key, delta)
    click.echo(json.dumps({"key": key, "value": value}) if as_json else str(value))


@kv_group.command("scan")
@click.argument("prefix", default="")
@click.option("--limit", type=click.IntRange(min=1), help="Print at most this many keys.")
@_CONSISTENCY_OPTION
@_client_options(default_timeout_ms=5_000)
def kv_scan_command(
    prefix: str,
    limit: int | None,
    consistency: str,
    client: ClientArgs,
    as_json: bool,
) -> None:
    """Print the live keys starting with PREFIX (all keys without one) in key order: KEY<TAB>VALUE
    per line, or one JSON object per line with --json. --timeout-ms bounds each page."""
    import json

    from trimaran.client.commands import item_line, item_to_json, kv_scan

    def show(item: Any) -> None:
        click.echo(json.dumps(item_to_json(item)) if as_json else item_line(item))

    found = _client_call(
        kv_scan, client.endpoints, prefix, show, limit=limit, consistency=consistency,
        **client.call_options(),
    )  # fmt: skip
    if not found:
        _none_found(f"no keys starting with {prefix}" if prefix else "no keys", as_json)


@kv_group.command("watch")
@click.argument("key")
@click.option("--prefix", "is_prefix", is_flag=True, help="Watch every key starting with KEY.")
@click.option("--from-revision", type=click.IntRange(min=0), help="Replay the changes after this revision first.")
@click.option("--count", type=click.IntRange(min=0), help="Stop after this many events (default: until Ctrl-C).")
@_client_options(default_timeout_ms=5_000)
def kv_watch_command(
    key: str,
    is_prefix: bool,
    from_revision: int | None,
    count: int | None,
    client: ClientArgs,
    as_json: bool,
) -> None:
    """Print the changes to KEY as they happen, one per line: REVISION put KEY VALUE, or
    REVISION delete KEY deleted|expired|evicted (one JSON object per line with --json).

    Follows leader changes and reconnects without losing or repeating a change; exits 1
    (compacted) if the history it needs is gone. --timeout-ms bounds each poll.
    """
    from trimaran.client.commands import event_line, event_to_json, kv_watch

    _stream_lines(
        kv_watch, client.endpoints, key, line=event_line, to_json=event_to_json, as_json=as_json,
        prefix=is_prefix, from_revision=from_revision, count=count, **client.call_options(),
    )  # fmt: skip
