"""A minimal one-shot client of the client protocol, for the runtime's own use.

``trimaran up`` uses it to wait until its cluster has a leader; it is not the client library
(``trimaran.client``, which node/ may not import), just hello + requests over raw frames. The RESP
listener forwards a pipeline's writes to the leader with it, on one connection.
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

from trimaran.errors import ProtocolError, TrimaranError, error_from_wire
from trimaran.node.config import Address
from trimaran.node.streams import read_frame
from trimaran.protocols.client_protocol import hello
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.framing import FrameDecoder, encode_frame


async def request_once(
    address: Address,
    op: str,
    body: dict[str, Any],
    cluster_id: str | None = None,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Any:
    """Connect (with TLS if ``ssl_context``), say hello (with ``token``), send one request and
    return its result; raise its typed error.

    Bound it with a cancel scope (``trio.fail_after``); ``OSError`` if nothing listens.
    """
    ((ok, value),) = await request_many(address, [(op, body)], cluster_id, token, ssl_context)
    if ok:
        return value
    raise value


async def request_many(
    address: Address,
    requests: list[tuple[str, dict[str, Any]]],
    cluster_id: str | None = None,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> list[tuple[bool, Any]]:
    """:func:`request_once` for several requests on one connection, sent in one write (the node's
    reader hands them to its driver together: one round, in order); (ok, result or typed error)
    of each, in order. A refused hello (an error frame) is raised."""
    tcp = await trio.open_tcp_stream(address.host, address.port)
    stream: trio.abc.Stream = tcp if ssl_context is None else trio.SSLStream(tcp, ssl_context, server_hostname=address.host)
    answers: dict[int, tuple[bool, Any]] = {}
    async with stream:
        decoder = FrameDecoder()
        frames = [encode_frame(pack(hello(cluster_id, token)))]
        frames += [encode_frame(pack([i, op, body])) for i, (op, body) in enumerate(requests, 1)]
        async with trio.open_nursery() as nursery:
            # Answers are read while the requests are still going out: a node that stops reading
            # at its in-flight cap goes on once it can write answers.
            nursery.start_soon(stream.send_all, b"".join(frames))
            for _ in range(len(requests) + 1):
                frame = await read_frame(stream, decoder)
                if frame is None:
                    raise ProtocolError(f"{address} closed the connection")
                obj = unpack(frame)
                if isinstance(obj, dict) and obj.get("type") == "error":
                    raise error_from_wire(obj.get("error"))
                if isinstance(obj, list) and len(obj) == 3 and type(obj[0]) is int and 1 <= obj[0] <= len(requests):
                    answers[obj[0]] = (True, obj[2]) if obj[1] else (False, error_from_wire(obj[2]))
                    if len(answers) == len(requests):
                        return [answers[i] for i in range(1, len(requests) + 1)]
    raise ProtocolError(f"{address} did not answer every request")


async def fetch_status(
    address: Address,
    cluster_id: str | None = None,
    timeout_s: float = 1.0,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> dict[str, Any] | None:
    """The node's ``status`` answer, or None if it did not give one within ``timeout_s``."""
    with trio.move_on_after(timeout_s):
        try:
            status = await request_once(address, "status", {}, cluster_id, token, ssl_context)
        except (OSError, TrimaranError, trio.BrokenResourceError):
            return None
        return status if isinstance(status, dict) else None
    return None
