"""What a node's data dir says about itself, beside the store: which cluster wrote it, and whether
that cluster required tokens.

Two small files, each written once (atomically: a temporary file, fsync, rename) and read before the
store is opened:

- ``CLUSTER_ID``: the cluster the data belongs to. A node of another cluster refuses the dir (its
  log would mix with this cluster's, and it would vote with another cluster's history).
- ``AUTH_REQUIRED``: the data was written by a node that required tokens, or restored from a backup
  of such a cluster. Auth is configured per node (``--auth-public-key``), not stored in the log:
  without this file, a node restarted or restored without its key would come up with auth off and
  serve the same data to anyone who reaches a port. With it, such a node refuses to start unless the
  operator says ``--allow-auth-off`` (a flag of its own: ``--insecure``, for listening beyond
  loopback, is often set for good and must not silence this). The file is never removed by
  trimaran: turning auth off for good is deleting it by hand, a step as explicit as the flag.

Both files are written before the data they describe (``restore`` marks a new data dir before it
writes the store), so a crash in between leaves a marker too many, never one too few.
"""

from __future__ import annotations

import os

from trimaran.errors import ConfigError

#: The file in a data dir naming the cluster it belongs to (written at its first start).
CLUSTER_ID_FILE = "CLUSTER_ID"
#: The file in a data dir saying its data was served with auth on (see the module docstring).
AUTH_REQUIRED_FILE = "AUTH_REQUIRED"
_AUTH_REQUIRED_TEXT = (
    "The data in this directory was written by a trimaran node that required tokens (or restored from a\n"
    "backup of such a cluster). A node started on it without --auth-public-key refuses to start unless\n"
    "given --allow-auth-off. Delete this file only to serve this data without auth for good.\n"
)


def _write_once(path: str, text: str) -> None:
    """Write ``path`` whole or not at all, and durably: the file's bytes, then its name (the
    directory's entry, which a power loss could otherwise take with it)."""
    with open(path + ".new", "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".new", path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def claim_data_dir(data_dir: str, cluster_id: str) -> None:
    """Refuse (ConfigError) a data dir that another cluster wrote, before anything reads it: its log
    would mix with this cluster's, and its node would vote with another cluster's history. A new
    data dir, or one from before this file existed, is claimed for ``cluster_id``."""
    path = os.path.join(data_dir, CLUSTER_ID_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            owner = f.read().strip()
    except FileNotFoundError:
        os.makedirs(data_dir, exist_ok=True)
        _write_once(path, cluster_id + "\n")
        return
    if owner != cluster_id:
        raise ConfigError(
            f"the data dir {data_dir} belongs to cluster {owner!r}, not {cluster_id!r}: give this node a new "
            f"--data-dir, or the --cluster-id it was made with"
        )


def mark_auth_required(data_dir: str) -> None:
    """Record that this data is served with auth on (a no-op once recorded)."""
    path = os.path.join(data_dir, AUTH_REQUIRED_FILE)
    if not os.path.exists(path):
        os.makedirs(data_dir, exist_ok=True)
        _write_once(path, _AUTH_REQUIRED_TEXT)


def auth_required(data_dir: str) -> bool:
    return os.path.exists(os.path.join(data_dir, AUTH_REQUIRED_FILE))


def check_auth(data_dir: str, *, auth_enabled: bool, allow_auth_off: bool) -> bool:
    """Before a node opens its store: with auth on, mark the data dir as requiring it; with auth off
    on a marked data dir, refuse (ConfigError) unless ``allow_auth_off``. True when the node goes on
    with auth off on data that required it (the caller says so in its log)."""
    if auth_enabled:
        mark_auth_required(data_dir)
        return False
    if not auth_required(data_dir):
        return False
    if allow_auth_off:
        return True
    raise ConfigError(
        f"refusing to serve {data_dir} without auth: its data was served with tokens required (or restored "
        "from such a cluster's backup), and anyone could now read and write it; start this node with "
        "--auth-public-key (a `trimaran up` cluster's is DATA_DIR/auth/signing-key.pub), or pass "
        "--allow-auth-off to accept the risk"
    )
