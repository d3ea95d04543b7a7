"""trimaran: a Raft-replicated KV cache, job queue and chat pub/sub on trio.

``trimaran.connect`` (trio) and ``trimaran.connect_sync`` (blocking) open a client, ``trimaran.Jobs`` is the job worker app; errors live in
``trimaran.errors``. Importing ``trimaran`` stays cheap: the client (and trio) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trimaran import errors

if TYPE_CHECKING:
    from .client import Jobs, connect, connect_sync

__all__ = ["Jobs", "connect", "connect_sync", "errors"]


def __getattr__(name: str) -> Any:
    # PEP 562: the client pulls in trio, which a `trimaran --help` or a storage test never needs.
    if name in ("connect", "connect_sync", "Jobs"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'trimaran' has no attribute {name!r}")
