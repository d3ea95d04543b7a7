"""The REST API under ``/v1/``: a plain ASGI app over :class:`~trimaran.node.http.edge.HttpEdge`.

==========================  ===========================================  =====================================
route                       query parameters                             answer (JSON)
==========================  ===========================================  =====================================
``GET /v1/kv/{key}``        ``consistency`` = linearizable|lease|stale   ``{"key", "value" | "value_base64",
                                                                         "revision", "ttl_remaining_ms"}``;
                                                                         404 ``not_found`` if absent
``PUT /v1/kv/{key}``        ``ttl_ms``, ``if_absent``, ``if_revision``   ``{"revision"}``; the body is the
                            (0: must be absent), ``if_value``            value's bytes
``DELETE /v1/kv/{key}``     ``if_revision``, ``if_value``                ``{"deleted": bool}``
``POST /v1/chat/{channel}``  ``ephemeral``; the body is the message       ``{"offset", "epoch"}`` (offset null if
                                                                         ephemeral)
``GET /v1/chat/{channel}``   ``since``, ``epoch``, ``limit``             ``{"messages": [{"offset", "data" |
                                                                         "data_base64", "at_ms"}], "epoch",
                                                                         "top", "oldest", "recovered",
                                                                         "next"}``
``GET /v1/chat/{channel}/``  -                                           ``{"members": [{"session", "info",
``presence``                                                             "joined_at_ms"}], "epoch"}``
``GET /v1/ws``               -                                           the WebSocket gateway (see
                                                                         :mod:`~trimaran.node.http.chat_gateway`)
``GET /v1/status``          -                                            the node's status (as ``trimaran
                                                                         status --json`` shows per node)
``GET /v1/openapi.json``    -                                            this API as OpenAPI 3.1
``GET /metrics``            -                                            Prometheus text (see
                                                                         :mod:`~trimaran.node.http.metrics`)
``GET /``                   -                                            the live dashboard (see
                                                                         :mod:`~trimaran.node.http.dashboard`)
==========================  ===========================================  =====================================

Keys are the path segment, percent-decoded to bytes (``/v1/kv/user%3A1`` is ``user:1``). With auth
on, every route but the OpenAPI document needs ``Authorization: Bearer <token>``, checked against
the same scopes as the client port (``kv:read``/``kv:write`` on the key, ``cluster:read``).

Errors are ``{"error": {"code", "name", "message", "details"}}`` — ``code`` as on the client port,
``name`` the class in :mod:`trimaran.errors` — with the HTTP status of :data:`STATUS_BY_ERROR`.
Any node serves every route: what only the leader can serve is forwarded to it (see
:mod:`~trimaran.node.http.edge`); with no leader known, 503 ``not_leader``. Bodies over ``http_body_bytes_max`` are refused (413) before they are
read in full.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any, Awaitable, Callable, Protocol
from urllib.parse import parse_qs, unquote_to_bytes

from trimaran import limits
from trimaran.errors import (
    AuthError,
    ClusterError,
    ConditionFailed,
    InvalidArgument,
    NotFound,
    NotLeader,
    OutOfMemory,
    PermissionDenied,
    QueueFull,
    RequestTimeout,
    StaleLease,
    StorageFullError,
    TooLarge,
    TrimaranError,
    Unauthenticated,
    Unavailable,
)
from trimaran.node.http.chat_gateway import CLOSE_UNAUTHENTICATED, ChatHub, serve_websocket
from trimaran.node.http.edge import HttpEdge
from trimaran.node.http.json_body import data_fields, encode, error_json

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: HTTP status of each error class (the first match in the class's MRO wins; unlisted: 500).
STATUS_BY_ERROR: tuple[tuple[type[TrimaranError], int], ...] = (
    (TooLarge, 413),
    (InvalidArgument, 400),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (AuthError, 403),
    (ConditionFailed, 412),
    (NotFound, 404),
    (QueueFull, 429),
    (StaleLease, 409),
    (OutOfMemory, 507),
    (StorageFullError, 507),
    (NotLeader, 503),
    (RequestTimeout, 504),
    (Unavailable, 503),
    (ClusterError, 503),
)
CONSISTENCIES = ("linearizable", "lease", "stale")
_JSON = [(b"content-type", b"application/json")]


class HttpError(Exception):
    """An answer that is not a TrimaranError: 404/405 and their friends."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def status_of(exc: TrimaranError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(exc: TrimaranError) -> dict[str, Any]:
    return {"error": error_json(exc)}


class Handler(Protocol):
    """A GET route that writes its own answer (a page, a file, a stream, Prometheus text).
    ``scoped``: it needs what ``status`` needs (``cluster:read``), checked before it is called."""

    scoped: bool

    async def __call__(self, scope: Scope, receive: Receive, send: Send, token: str | None) -> None: ...


class RestApp:
    """The ASGI app (``await app(scope, receive, send)``); see the module docstring. ``handlers``:
    GET routes by exact path that answer for themselves (``/metrics``, the dashboard)."""

    def __init__(self, edge: HttpEdge, hub: ChatHub | None = None, handlers: dict[bytes, Handler] | None = None) -> None:
        self.edge = edge
        self.hub = hub
        self.body_bytes_max = edge.config.http_body_bytes_max
        self.handlers = handlers or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        self.edge.requests += 1
        query_string: bytes = scope.get("query_string", b"")
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if raw_path.split(b"?", 1)[0] in (b"/chat", b"/chat/") and scope["method"] == "GET":
            await send_page(send, chat_page())
            return
        try:
            handler = self.handlers.get(raw_path.split(b"?", 1)[0])
            if handler is not None:
                _only(scope["method"], "GET")
                token = _bearer(scope)
                if handler.scoped:
                    self._authorise(token, "status", {})
                await handler(scope, receive, send, token)
                return
            status, body = await self._route(scope, raw_path.split(b"?", 1)[0], query_string, receive)
        except TrimaranError as exc:
            self.edge.errors += 1
            status, body = status_of(exc), error_body(exc)
        except HttpError as exc:
            self.edge.errors += 1
            body = {"error": {"code": exc.code, "name": "HttpError", "message": exc.message, "details": {}}}
            status = exc.status
        payload = encode(body).encode()
        await send({"type": "http.response.start", "status": status, "headers": _JSON})
        await send({"type": "http.response.body", "body": payload})

    async def _route(
        self, scope: Scope, path: bytes, query_string: bytes, receive: Receive
    ) -> tuple[int, dict[str, Any]]:
        method = scope["method"]
        if path == b"/v1/openapi.json" and method == "GET":
            return 200, openapi()
        token = _bearer(scope)
        query = _query(query_string)
        if path == b"/v1/status":
            _only(method, "GET")
            self._authorise(token, "status", {})
            return 200, self.edge.status()
        if path.startswith(b"/v1/kv/"):
            key = unquote_to_bytes(path[len(b"/v1/kv/") :])
            return await self._kv(method, key, query, token, receive)
        if path.startswith(b"/v1/chat/"):
            rest = unquote_to_bytes(path[len(b"/v1/chat/") :])
            channel, _, tail = rest.partition(b"/")
            return await self._chat(method, channel.decode("utf-8", "replace"), tail, query, token, receive)
        raise HttpError(404, "not_found", f"no route {path.decode('latin-1')!r}; see /v1/openapi.json")

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("raw_path") or scope["path"].encode()
        if self.hub is None or path.split(b"?", 1)[0] != b"/v1/ws":
            await receive()
            await send({"type": "websocket.close", "code": 1008, "reason": "the WebSocket endpoint is /v1/ws"})
            return
        try:
            token = _bearer(scope)
        except Unauthenticated as exc:
            await receive()
            await send({"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED, "reason": exc.message[:120]})
            return
        await serve_websocket(self.hub, scope, receive, send, token)

    def _authorise(self, token: str | None, op: str, body: dict[str, Any]) -> None:
        grant = self.edge.grant(token)
        if grant is not None:
            self.edge.authoriser.check(grant, op, body)

    async def _kv(
        self, method: str, key: bytes, query: dict[str, str], token: str | None, receive: Receive
    ) -> tuple[int, dict[str, Any]]:
        # The key is checked where the command or query is parsed (authoriser or service): one rule.
        if method == "GET":
            consistency = query.get("consistency", "linearizable")
            if consistency not in CONSISTENCIES:
                raise InvalidArgument(f"consistency must be one of {', '.join(CONSISTENCIES)}")
            body = {"service": "kv", "query": ["get", key], "consistency": consistency}
            self._authorise(token, "read", body)
            result = await self.edge.request("read", body, 0, token)
            if result is None:
                raise NotFound(f"no key {key.decode('utf-8', 'backslashreplace')!r}", kind="key")
            value, revision, ttl_remaining_ms = result
            out = {**data_fields(key, "key"), **data_fields(value, "value"), "revision": revision, "ttl_remaining_ms": ttl_remaining_ms}
            return 200, out
        if method == "PUT":
            value = await _read_body(receive, self.body_bytes_max)
            options = _kv_options(query, ("ttl_ms", "if_absent", "if_revision", "if_value"))
            command: list[Any] = ["set", key, value] + ([options] if options else [])
            body = {"service": "kv", "command": command}
            self._authorise(token, "command", body)
            return 200, {"revision": await self.edge.command("kv", command, len(value), token)}
        if method == "DELETE":
            options = _kv_options(query, ("if_revision", "if_value"))
            command = ["delete", key] + ([options] if options else [])
            body = {"service": "kv", "command": command}
            self._authorise(token, "command", body)
            return 200, {"deleted": bool(await self.edge.command("kv", command, len(key), token))}
        raise HttpError(405, "method_not_allowed", f"{method} is not served on /v1/kv/{{key}} (GET, PUT, DELETE)")


    async def _chat(
        self, method: str, channel: str, tail: bytes, query: dict[str, str], token: str | None, receive: Receive
    ) -> tuple[int, dict[str, Any]]:
        if tail == b"presence":
            _only(method, "GET")
            body = {"service": "chat", "query": ["presence", channel], "consistency": "linearizable"}
            self._authorise(token, "read", body)
            answer = await self.edge.request("read", body, 0, token)
            members = [{"session": s, **data_fields(i, "info"), "joined_at_ms": t} for s, i, t in answer["members"]]
            return 200, {"channel": channel, "members": members, "epoch": answer["epoch"]}
        if tail:
            raise HttpError(404, "not_found", "chat routes are /v1/chat/{channel} and /v1/chat/{channel}/presence")
        if method == "POST":
            data = await _read_body(receive, self.body_bytes_max)
            ephemeral = _flag(query.pop("ephemeral", None), "ephemeral")
            if query:
                raise InvalidArgument(f"unknown query parameter {sorted(query)[0]!r} (known: ephemeral)")
            command: list[Any] = ["publish", channel, data] + ([{"ephemeral": True}] if ephemeral else [])
            self._authorise(token, "command", {"service": "chat", "command": command})
            offset, epoch = await self.edge.command("chat", command, len(data), token)
            return 200, {"channel": channel, "offset": offset, "epoch": epoch}
        if method == "GET":
            options: dict[str, Any] = {}
            for name, text in query.items():
                if name == "epoch":
                    options[name] = text
                elif name in ("since", "limit"):
                    options[name] = _int_param(name, text)
                else:
                    raise InvalidArgument(f"unknown query parameter {name!r} (known: since, epoch, limit)")
            chat_query: list[Any] = ["history", channel] + ([options] if options else [])
            body = {"service": "chat", "query": chat_query, "consistency": "linearizable"}
            self._authorise(token, "read", body)
            page = await self.edge.request("read", body, 0, token)
            messages = [{"offset": o, **data_fields(d, "data"), "at_ms": t} for o, d, t in page.pop("messages")]
            return 200, {"channel": channel, "messages": messages, **page}
        raise HttpError(405, "method_not_allowed", f"{method} is not served on /v1/chat/{{channel}} (GET, POST)")


def _flag(text: str | None, name: str) -> bool:
    if text is None:
        return False
    if text not in ("", "true", "1"):
        raise InvalidArgument(f"{name} takes no value, or true")
    return True


def _int_param(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer, not {text[:40]!r}") from None


@functools.cache
def chat_page() -> bytes:
    """The chat page (``chat.html`` beside this module): no build step, nothing from elsewhere."""
    return importlib.resources.files("trimaran.node.http").joinpath("chat.html").read_bytes()


#: The chat page loads nothing from elsewhere, and says so to the browser.
CHAT_CSP = b"default-src 'self'; connect-src 'self' ws: wss:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


async def send_page(send: Send, page: bytes, csp: bytes = CHAT_CSP) -> None:
    """A page of ours, with its content security policy."""
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-security-policy", csp),
        (b"cache-control", b"no-cache"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": page})


def _only(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, "method_not_allowed", f"only {allowed} is served here")


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
            return token.strip()
    return None


def _query(query_string: bytes) -> dict[str, str]:
    if len(query_string) > limits.KIB * 4:
        raise TooLarge("the query string is over 4 KiB")
    try:
        parsed = parse_qs(query_string.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise InvalidArgument("the query string is not UTF-8") from None
    out = {}
    for name, values in parsed.items():
        if len(values) != 1:
            raise InvalidArgument(f"query parameter {name!r} is given {len(values)} times")
        out[name] = values[0]
    return out


def _kv_options(query: dict[str, str], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The KV command's options map from query parameters (the service validates the values)."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise InvalidArgument(f"unknown query parameter {unknown[0]!r} (known: {', '.join(allowed)})")
    options: dict[str, Any] = {}
    for name, text in query.items():
        if name == "if_absent":
            options[name] = _flag(text, name)
        elif name == "if_value":
            options[name] = text.encode()
        else:
            options[name] = _int_param(name, text)
    return options


async def _read_body(receive: Receive, bytes_max: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidArgument("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > bytes_max:
            raise TooLarge(f"the request body is over {bytes_max} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def openapi() -> dict[str, Any]:
    """This API as an OpenAPI 3.1 document (built from the same tables the routes use)."""
    error = {"$ref": "#/components/schemas/Error"}
    errors = {
        str(status): {"description": name, "content": {"application/json": {"schema": error}}}
        for status, name in ((400, "invalid argument"), (401, "no or bad token"), (403, "scope missing"), (503, "unavailable or not the leader"))
    }
    key_param = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}, "description": "percent-encoded key bytes"}
    channel_param = {"name": "channel", "in": "path", "required": True, "schema": {"type": "string"}}
    int_param = lambda name, text: {"name": name, "in": "query", "schema": {"type": "integer"}, "description": text}  # noqa: E731
    entry = {
        "type": "object",
        "properties": {
            "key": {"type": "string"},
            "value": {"type": "string", "description": "UTF-8 value (else value_base64)"},
            "value_base64": {"type": "string"},
            "revision": {"type": "integer"},
            "ttl_remaining_ms": {"type": ["integer", "null"]},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "trimaran", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "PASETO v4.public"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "name": {"type": "string"},
                                "message": {"type": "string"},
                                "details": {"type": "object"},
                            },
                        }
                    },
                }
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/kv/{key}": {
                "get": {
                    "summary": "Read a key",
                    "parameters": [key_param, {"name": "consistency", "in": "query", "schema": {"enum": list(CONSISTENCIES)}}],
                    "responses": {"200": {"description": "the entry", "content": {"application/json": {"schema": entry}}}, "404": {"description": "no such key"}, **errors},
                },
                "put": {
                    "summary": "Write a key (the body is the value)",
                    "parameters": [
                        key_param,
                        int_param("ttl_ms", "expire after this many ms"),
                        int_param("if_revision", "only if the key's revision is this (0: absent)"),
                        {"name": "if_absent", "in": "query", "schema": {"type": "boolean"}},
                        {"name": "if_value", "in": "query", "schema": {"type": "string"}},
                    ],
                    "requestBody": {"content": {"application/octet-stream": {}}},
                    "responses": {"200": {"description": "the new revision"}, "412": {"description": "a condition failed"}, **errors},
                },
                "delete": {
                    "summary": "Delete a key",
                    "parameters": [key_param, int_param("if_revision", "only if the key's revision is this")],
                    "responses": {"200": {"description": "deleted or not"}, "412": {"description": "a condition failed"}, **errors},
                },
            },
            "/v1/chat/{channel}": {
                "post": {
                    "summary": "Publish (the body is the message)",
                    "parameters": [channel_param, {"name": "ephemeral", "in": "query", "schema": {"type": "boolean"}}],
                    "requestBody": {"content": {"application/octet-stream": {}}},
                    "responses": {"200": {"description": "offset and epoch"}, **errors},
                },
                "get": {
                    "summary": "History after an offset",
                    "parameters": [
                        channel_param,
                        int_param("since", "the last offset you have"),
                        {"name": "epoch", "in": "query", "schema": {"type": "string"}},
                        int_param("limit", "messages at most"),
                    ],
                    "responses": {"200": {"description": "a page of history"}, **errors},
                },
            },
            "/v1/chat/{channel}/presence": {
                "get": {"summary": "Who is present", "parameters": [channel_param], "responses": {"200": {"description": "members"}, **errors}}
            },
            "/v1/ws": {"get": {"summary": "The chat WebSocket gateway (JSON frames; see the README)", "responses": {"101": {"description": "upgraded"}}}},
            "/v1/status": {"get": {"summary": "This node's status", "responses": {"200": {"description": "status"}, **errors}}},
            "/metrics": {"get": {"summary": "Prometheus text (cluster:read)", "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}, **errors}}},
            "/": {"get": {"summary": "The live dashboard page", "security": [], "responses": {"200": {"description": "HTML"}}}},
            "/v1/dashboard/stream": {"get": {"summary": "The dashboard's server-sent events (cluster:read)", "responses": {"200": {"description": "text/event-stream"}, **errors}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI"}}}},
        },
    }
