"""The HTTP edge of a node (``--http-listen``): the REST API under ``/v1/`` now, the WebSocket
gateway and the chat page as the chat service lands.

- :mod:`~trimaran.node.http.edge` — :class:`HttpEdge`: serves an ASGI app with hypercorn's trio
  worker on the node's own trio loop, and turns HTTP requests into the same driver requests the
  client port makes (the same authoriser, the same sessions, the same typed errors).
- :mod:`~trimaran.node.http.front` — the port's own listener (plain TCP): chat WebSocket upgrades
  (``/v1/ws``) are served by trio-websocket with frames written straight to the socket, every
  other connection goes to hypercorn (with TLS, hypercorn serves the port alone).
- :mod:`~trimaran.node.http.rest` — the ASGI app: routing, bearer tokens, JSON bodies, the status
  code of every error, and the OpenAPI document.

Why hypercorn: one port serves HTTP/1.1 (and HTTP/2, WebSocket) on trio, which the node already
runs on; it is maintained, typed, and bounds its parsers (header sizes, message sizes). The app is a
plain ASGI callable, so no web framework sits between a request and the driver. Chat fan-out is
the exception measured: its frames through ASGI, hypercorn and wsproto were about a third of a
follower's CPU, so ``front`` writes them itself, to the same app and the same ASGI messages.
"""
