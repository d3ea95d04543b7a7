"""The RESP listener: Redis clients (redis-py, redis-cli, redis-benchmark) talk to the replicated
KV cache. :mod:`.server` serves connections; :mod:`.connection_commands` and :mod:`.strings` hold
the command handlers; :mod:`.writes` hands a pipeline's writes to the driver together."""

from trimaran.node.resp.server import RespServer

__all__ = ["RespServer"]
