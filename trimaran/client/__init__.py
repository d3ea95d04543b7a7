"""The trimaran Python client: trio-native (:func:`connect`) and blocking (:func:`connect_sync`).

::

    async with trimaran.connect(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]) as c:
        await c.set("greeting", "hello")
        assert await c.get("greeting") == b"hello"

Every error is a :class:`trimaran.errors.TrimaranError`; see that module for the tree.
"""

from .client import Client, connect
from .connection import Address, parse_endpoints
from .sync import SyncClient, connect_sync

__all__ = ["Address", "Client", "SyncClient", "connect", "connect_sync", "parse_endpoints"]
