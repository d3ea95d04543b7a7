"""``trimaran chat publish|history|presence|subscribe``: chat pub/sub through the client (``c.chat``;
the WebSocket gateway for subscribe)."""

from __future__ import annotations

import click

from trimaran.cli import ClientArgs, _client_options, _none_found, _service, _stream_lines, main


@main.group("chat")
def chat_group() -> None:
    """Chat pub/sub: publish, subscribe, history, presence (see also the WebSocket gateway /v1/ws)."""


@chat_group.command("publish")
@click.argument("channel")
@click.argument("message")
@click.option("--ephemeral", is_flag=True, help="Deliver live only: not kept in history, no offset (typing indicators).")
@_client_options(default_timeout_ms=5_000)
def chat_publish_command(
    channel: str, message: str, ephemeral: bool, client: ClientArgs, as_json: bool
) -> None:
    """Publish MESSAGE to CHANNEL; prints its offset and the channel's epoch once committed."""
    import json

    offset, epoch = _service("chat", client, "publish", channel, message, ephemeral=ephemeral)
    click.echo(json.dumps({"offset": offset, "epoch": epoch}) if as_json else f"{offset} {epoch}")


@chat_group.command("history")
@click.argument("channel")
@click.option("--since", type=click.IntRange(min=0), help="The last offset you have (default: from the oldest kept).")
@click.option("--epoch", help="The epoch SINCE belongs to (a reset channel then says it did not recover).")
@click.option("--limit", type=click.IntRange(min=0), help="Messages at most (one page).")
@_client_options(default_timeout_ms=5_000)
def chat_history_command(
    channel: str,
    since: int | None,
    epoch: str | None,
    limit: int | None,
    client: ClientArgs,
    as_json: bool,
) -> None:
    """Print CHANNEL's messages after --since, one per line: OFFSET MESSAGE (JSON lines with --json)."""
    import json

    from trimaran.client.commands import bytes_to_json, text

    page = _service("chat", client, "history", channel, since=since, epoch=epoch, limit=limit)
    for m in page.messages:
        click.echo(json.dumps({"offset": m.offset, **bytes_to_json("data", m.data), "at_ms": m.at_ms}) if as_json else f"{m.offset} {text(m.data)}")
    if not page.messages and page.recovered:
        _none_found(f"no messages on {channel}" + ("" if since is None else f" after {since}"), as_json)
    if not page.recovered:
        click.echo(f"history no longer reaches back to {since}: it starts at {page.oldest} (epoch {page.epoch})", err=True)


@chat_group.command("presence")
@click.argument("channel")
@_client_options(default_timeout_ms=5_000)
def chat_presence_command(
    channel: str, client: ClientArgs, as_json: bool
) -> None:
    """Print who is present in CHANNEL: SESSION INFO per line (JSON lines with --json)."""
    import json

    from trimaran.client.commands import bytes_to_json, text

    present = _service("chat", client, "presence", channel)
    for session, info, joined_at_ms in present:
        line = json.dumps({"session": session, **bytes_to_json("info", info), "joined_at_ms": joined_at_ms})
        click.echo(line if as_json else f"{session} {text(info)}")
    if not present:
        _none_found(f"no one present on {channel}", as_json)


@chat_group.command("subscribe")
@click.argument("channel")
@click.option("--since", type=click.IntRange(min=0), help="Replay the messages after this offset first (0: all kept).")
@click.option("--epoch", help="The epoch SINCE belongs to.")
@click.option("--count", type=click.IntRange(min=0), help="Stop after this many messages (default: until Ctrl-C).")
@_client_options(default_timeout_ms=5_000)
def chat_subscribe_command(
    channel: str,
    since: int | None,
    epoch: str | None,
    count: int | None,
    client: ClientArgs,
    as_json: bool,
) -> None:
    """Print CHANNEL's messages as they come: OFFSET MESSAGE per line; '~' ephemeral, '+'/'-'
    presence, '#' a new epoch (JSON lines with --json). Through a node's WebSocket gateway;
    reconnects and resumes without a gap or a repeat."""
    from trimaran.client.commands import chat_event_line, chat_event_to_json, chat_subscribe

    _stream_lines(
        chat_subscribe, client.endpoints, channel, line=chat_event_line, to_json=chat_event_to_json, as_json=as_json,
        since=since, epoch=epoch, count=count, **client.call_options(),
    )  # fmt: skip

