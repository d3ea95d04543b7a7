"""``trimaran snapshot restore``: seed a new node's data dir from a backup file.

The backup's snapshot is published as the store's latest snapshot, with a hard state at its term
and commit index, so ``trimaran node run --data-dir DIR`` boots from it exactly as a node boots
from its own last snapshot (etcdutl snapshot restore does the same for etcd). Every node of the new
cluster is restored from the same file. The membership is the source cluster's, or ``voters`` (a
new cluster's node ids, as etcd's ``--initial-cluster``); a node id outside it would never vote.
A backup of a cluster that required tokens marks the new data dir so (:mod:`trimaran.node.data_dir`):
its node will not come up with auth off by accident.
"""

from __future__ import annotations

import os
from pathlib import Path

from trimaran.errors import ConfigError
from trimaran.node.data_dir import mark_auth_required
from trimaran.protocols import backup_file
from trimaran.protocols.messages import NO_NODE, HardState, Snapshot
from trimaran.storage.base import WriteBatch
from trimaran.storage.lmdb_store import LmdbStorage


def read_backup(path: str | os.PathLike[str]) -> tuple[backup_file.BackupHeader, bytes]:
    """The header and the checked snapshot bytes of a backup file (InvalidArgument if damaged)."""
    data = Path(path).read_bytes()
    header, start = backup_file.decode_prefix(data)
    snapshot = data[start:]
    backup_file.check_snapshot(header, snapshot)
    return header, snapshot


def restore(
    path: str | os.PathLike[str], data_dir: str | os.PathLike[str], node_id: int, voters: tuple[int, ...] | None = None
) -> backup_file.BackupHeader:
    """Write the backup at ``path`` into the new data dir ``data_dir`` for node ``node_id``.
    ``ConfigError`` if the data dir holds anything, or if ``node_id`` would not be a member."""
    header, snapshot = read_backup(path)
    meta = header.meta(voters)
    members = meta.membership.voters + meta.membership.learners
    if node_id not in members:
        raise ConfigError(
            f"node {node_id} is not a member of the restored cluster (voters {list(meta.membership.voters)}); "
            "give --voters with the new cluster's node ids"
        )
    target = Path(data_dir)
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{target} is not empty: restore only into a new data dir (it never overwrites a node's data)")
    if header.auth_required:
        # Before the data: a crash between the two leaves a guard without data, never data without it.
        mark_auth_required(str(target))
    store = LmdbStorage(str(target))
    try:
        store.write([WriteBatch(hard_state=HardState(header.term, NO_NODE, header.index), snapshot=Snapshot(meta, snapshot))])
    finally:
        store.close()
    return header
