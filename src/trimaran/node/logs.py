"""A node's log lines: one event per line, as text or JSON, each naming the node and its term.

``trimaran node run --log-format text|json --log-level LEVEL`` (``trimaran up`` passes both on to
its nodes). Operators grep the text form and ship the JSON form to a log store; both carry the
same fields:

==============  ==================================================================================
field           what
==============  ==================================================================================
``ts``          wall-clock time, RFC 3339 with milliseconds, UTC
``level``       ``debug``, ``info``, ``warning``, ``error``
``node``        this node's id
``term``        the node's Raft term when the line was written (once the node has a log)
``logger``      the module that wrote it (``trimaran.node.driver``, ...)
``event``       what happened, a stable name (below); absent on free-form lines
``msg``         the sentence a person reads
(more)          the event's own fields: ``leader``, ``index``, ``request_id``, ``sub``, ...
==============  ==================================================================================

Events (the ones an operator alerts or searches on; :func:`event` writes them):

=====================  =========  ==============================================================
event                  level      fields
=====================  =========  ==============================================================
``election``           info       term: this node stood for election
``leader_elected``     info       leader, term: a leader this node learned of (itself included)
``membership``         info       voters, learners, index: an applied membership change
``snapshot_taken``     info       index, bytes
``snapshot_installed`` info       index, bytes: from the leader
``slow_write``         warning    seconds, entries: a group commit (LMDB write and fsync) over
                                  :data:`SLOW_WRITE_S`
``peer_refused``       warning    peer, reason: a peer handshake this node refused or was refused
``auth_refused``       info       sub, reason, request_id: a request or hello refused by the
                                  authoriser (rate-limited)
``removed``            warning    index: this node is no longer a member
=====================  =========  ==============================================================

No line is written per successful request (at ``info`` and above).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

#: A group commit slower than this is logged (etcd warns on a slow fdatasync from 1 s; a Raft
#: heartbeat round is 50-150 ms here, so half a second already delays elections' view of us).
SLOW_WRITE_S = 0.5

LOG_FORMATS = ("text", "json")

#: The attribute of a LogRecord that carries an event's fields (see :func:`event`).
_FIELDS = "trimaran_fields"
_EVENT = "trimaran_event"

#: Where the term comes from (set by the node once its driver exists; None before).
_term_source: Callable[[], int] | None = None


def event(logger: logging.Logger, level: int, name: str, msg: str, *args: Any, **fields: Any) -> None:
    """Log ``msg % args`` as the event ``name`` with ``fields`` (kept as fields in JSON, appended
    as ``key=value`` in text)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, *args, extra={_EVENT: name, _FIELDS: fields}, stacklevel=2)


def set_term_source(source: Callable[[], int] | None, only_if: Callable[[], int] | None = None) -> None:
    """Every line from now on carries ``source()`` as its term (the node's Raft term). With
    ``only_if``, only if that is still the source (a stopping node clears only its own)."""
    global _term_source
    if only_if is None or _term_source is only_if:
        _term_source = source


def _term() -> int | None:
    source = _term_source
    if source is None:
        return None
    try:
        return source()
    except Exception:  # a log line must never fail because the node is half torn down
        return None


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z"


class _NodeFormatter(logging.Formatter):
    def __init__(self, node_id: int) -> None:
        super().__init__()
        self.node_id = node_id

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname.lower(), "node": self.node_id}
        term = _term()
        if term is not None:
            out["term"] = term
        out["logger"] = record.name
        name = getattr(record, _EVENT, None)
        if name is not None:
            out["event"] = name
        out["msg"] = record.getMessage()
        for key, value in getattr(record, _FIELDS, {}).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return out


class JsonFormatter(_NodeFormatter):
    """One JSON object per line (values that are not JSON become their ``str``)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), default=str, separators=(",", ":"))


class TextFormatter(_NodeFormatter):
    """``TS nodeN LEVEL logger: msg [event=... term=... key=value ...]``."""

    def format(self, record: logging.LogRecord) -> str:
        f = self.fields(record)
        extra = {k: v for k, v in f.items() if k not in ("ts", "level", "node", "logger", "msg", "exc")}
        tail = " ".join(f"{k}={_text_value(v)}" for k, v in extra.items())
        line = f"{f['ts']} node{self.node_id} {f['level'].upper()} {f['logger']}: {f['msg']}"
        if tail:
            line += f" [{tail}]"
        if "exc" in f:
            line += "\n" + f["exc"]
        return line


def _text_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def configure_logging(level: str, node_id: int, log_format: str = "text") -> None:
    """Lines of ``level`` and above to stderr in ``log_format`` (``text`` or ``json``), each
    naming the node (several nodes often share one terminal or file). Like ``logging.basicConfig``
    it leaves a process whose logging someone else set up (a test runner, an embedding program)
    alone; called again, it replaces only its own handler."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h.formatter, _NodeFormatter)]
    if len(ours) != len(root.handlers):
        return
    for old in ours:
        root.removeHandler(old)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(node_id) if log_format == "json" else TextFormatter(node_id))
    root.addHandler(handler)
    root.setLevel(level.upper())
