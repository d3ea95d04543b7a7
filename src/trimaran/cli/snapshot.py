"""``trimaran snapshot save|inspect|restore``: back up a live cluster, and seed a new one from it."""

from __future__ import annotations

import json
import time

import click

from trimaran.cli import ClientArgs, _client_call, _client_options, main
from trimaran.cli.progress import byte_size, transfer_bar


@main.group("snapshot")
def snapshot_group() -> None:
    """Back up a cluster and restore it into new data dirs.

    `save` takes a consistent snapshot on the leader (every write acknowledged before it is in
    it) and streams it into a file; `inspect` prints what a file holds; `restore` seeds a new
    node's data dir from it (run it for every node of the new cluster, then start the nodes).
    """


@snapshot_group.command("save")
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@_client_options(default_timeout_ms=600_000)
def snapshot_save_command(file: str, client: ClientArgs, as_json: bool) -> None:
    """Save a consistent snapshot of the cluster to FILE (needs an admin:* token).

    The file appears only once it is complete and checked (it is written to FILE.part first).
    """
    from trimaran.client.commands import save_backup

    bar = transfer_bar()
    try:
        header = _client_call(
            save_backup, client.endpoints, file, progress=None if as_json else bar, **client.call_options()
        )
    finally:
        bar.end()
    if as_json:
        click.echo(json.dumps(header | {"file": file}))
    else:
        click.echo(
            f"saved {file}: index {header['index']}, term {header['term']}, {_size(header['size_bytes'])}, "
            f"crc32 {_crc(header['crc32'])}, sha256 {header['sha256']}"
        )


@snapshot_group.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def snapshot_inspect_command(file: str, as_json: bool) -> None:
    """Print what the backup FILE holds, one labelled line each: cluster, index, term, log time, voters,
    learners, size, CRC-32 (the checksum the cluster itself checks), SHA-256, and the size of each part."""
    from trimaran.errors import TrimaranError
    from trimaran.node.backup_restore import read_backup
    from trimaran.protocols.backup_file import describe

    try:
        header, snapshot = read_backup(file)
    except TrimaranError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    info = header.to_dict() | describe(snapshot)
    if as_json:
        click.echo(json.dumps(info))
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["log_time_ms"] / 1000))
    rows = [
        ("file", file),
        ("cluster", header.cluster_id),
        ("index", header.index),
        ("term", header.term),
        ("log time", f"{when} (the leader's clock at the snapshot)"),
        ("voters", ", ".join(map(str, header.voters))),
        ("learners", ", ".join(map(str, header.learners)) or "none"),
        ("size", _size(header.size_bytes)),
        ("crc32", f"{_crc(header.crc32)} (the checksum a node checks on every snapshot it installs or loads)"),
        ("sha256", header.sha256),
        ("auth", _AUTH_REQUIRED if header.auth_required else "off (the cluster it came from required no token)"),
    ]
    for label, value in rows:
        click.echo(f"{label:<9} {value}")
    click.echo("parts     (bytes each takes, packed)")
    for name, size_bytes in info["parts_bytes"].items():
        click.echo(f"  {name:<12} {size_bytes:>12} bytes")


_AUTH_REQUIRED = "required: start the restored nodes with --auth-public-key (they refuse to start without it, or --allow-auth-off)"


def _size(size_bytes: int) -> str:
    return f"{size_bytes} bytes" + ("" if size_bytes < 1024 else f" ({byte_size(size_bytes)})")


def _crc(crc32: int) -> str:
    """A CRC-32 as zlib and most tools print it: 8 hex digits."""
    return f"0x{crc32:08x}"


def _voters(value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        ids = tuple(sorted({int(v) for v in value.split(",")}))
    except ValueError:
        raise click.BadParameter("a comma-separated list of node ids, e.g. 1,2,3") from None
    if not ids or ids[0] < 1:
        raise click.BadParameter("node ids are positive")
    return ids


@snapshot_group.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="The new node's data dir (must be empty or absent).")
@click.option("--id", "node_id", required=True, type=click.IntRange(min=1), help="The node this data dir is for.")
@click.option("--voters", help="The new cluster's voter ids, comma-separated [default: the source cluster's].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def snapshot_restore_command(file: str, data_dir: str, node_id: int, voters: str | None, as_json: bool) -> None:
    """Seed a new node's data dir from the backup FILE.

    Restore the same file for every node of the new cluster, then start each with `trimaran node
    run --data-dir DIR --id N` and its peers; the cluster starts at the backup's state. A backup of
    a cluster that required tokens needs --auth-public-key on every restored node too.
    """
    from trimaran.errors import TrimaranError
    from trimaran.node.backup_restore import restore

    try:
        header = restore(file, data_dir, node_id, _voters(voters))
    except TrimaranError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    if as_json:
        click.echo(json.dumps(header.to_dict() | {"data_dir": data_dir, "node_id": node_id}))
    else:
        click.echo(f"restored {file} (index {header.index}, term {header.term}) into {data_dir} for node {node_id}")
        if header.auth_required:
            click.echo("auth " + _AUTH_REQUIRED)
