"""Scopes: what a token allows, as ``<service>:<action>:<pattern>`` strings; deny by default.

A pattern is an exact name or a prefix ending in ``*`` (``kv:read:user:*``, ``jobs:work:*``,
``chat:subscribe:room.42``). ``<service>:*`` grants every action of a service on every name, and
``admin:*`` grants everything. Names are matched as bytes (a KV key need not be UTF-8; a pattern is
UTF-8), and a name may itself hold ``:`` (only the first two separate the parts).

Every action of every service, and what it names (the one table; the README repeats it):

=========  ===========  =======  ==========================================================
service    action       names    operations
=========  ===========  =======  ==========================================================
kv         read         key      get, mget, scan (a prefix: the grant must cover all of it),
                                 watch, stats
kv         write        key      set, delete, incr, decr, mset, touch, expire
jobs       enqueue      queue    enqueue, enqueue_batch (every job's queue)
jobs       work         queue    claim (every queue named), complete, fail, release,
                                 ack_cancel (the job's queue), heartbeat, session_close
                                 and the session query (the queue of every job the session
                                 holds), the ready query; session_open: on any queue
jobs       read         queue    the job and result queries (the job's queue), stats, list,
                                 dlq; the schedules query lists every queue's: ``jobs:read:*``
jobs       manage       queue    cancel (the job's queue), dlq_requeue, dlq_purge, pause,
                                 resume, queue_config, schedule (its queue, and the queue of
                                 the schedule it replaces), unschedule (the schedule's queue)
chat       publish      channel  publish, join and leave (being present)
chat       subscribe    channel  subscribe, history, presence (who is present)
cluster    read         -        status (the name is ignored: ``cluster:read``)
admin      \\*           -        everything: membership, auth keys and revocations, the
                                 register test service (``admin:*``)
=========  ===========  =======  ==========================================================

A request that names a job, session or schedule the node does not hold (unknown, or purged) needs
the action on any one name (the service then answers ``NotFound``, ``StaleLease`` or None); see
:mod:`trimaran.node.authoriser` for how the node finds what an id belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

from trimaran import limits
from trimaran.errors import InvalidArgument

#: service -> its actions (the table above). ``admin`` has no actions of its own: ``admin:*``.
ACTIONS: dict[str, tuple[str, ...]] = {
    "kv": ("read", "write"),
    "jobs": ("enqueue", "work", "read", "manage"),
    "chat": ("publish", "subscribe"),
    "cluster": ("read",),
    "admin": (),
}
#: Services whose actions do not name anything: the scope is just ``service:action``.
UNNAMED_SERVICES = frozenset({"cluster"})
WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class Scope:
    """One parsed grant. ``action`` is ``*`` for every action; ``prefix`` says ``pattern`` ended in ``*``."""

    service: str
    action: str
    pattern: bytes
    prefix: bool

    def allows(self, service: str, action: str, name: bytes | None = b"", name_is_prefix: bool = False) -> bool:
        """Does this grant cover ``action`` on ``name`` of ``service``?

        ``name_is_prefix``: the request touches every name starting with ``name`` (a prefix scan or
        watch), so only a prefix grant whose prefix ``name`` starts with covers it. ``name`` None:
        any one name will do (a job the node does not hold: the grant of the action on some queue).
        """
        if self.service == "admin":
            return True
        if self.service != service or self.action not in (WILDCARD, action):
            return False
        if service in UNNAMED_SERVICES or name is None:
            return True
        if self.prefix:
            return name.startswith(self.pattern)
        return not name_is_prefix and name == self.pattern


def parse_scope(text: str) -> Scope:
    """Parse one grant; ``InvalidArgument`` naming what is wrong."""
    if not isinstance(text, str) or not 0 < len(text.encode()) <= limits.scope_bytes_max:
        raise InvalidArgument(f"a scope is a string of 1..{limits.scope_bytes_max} bytes")
    service, _, rest = text.partition(":")
    if service not in ACTIONS:
        raise InvalidArgument(f"unknown service in scope {text[:64]!r}; known: {', '.join(ACTIONS)}")
    if service == "admin":
        if rest != WILDCARD:
            raise InvalidArgument("the admin scope is exactly 'admin:*'")
        return Scope("admin", WILDCARD, b"", True)
    action, sep, pattern = rest.partition(":")
    if action != WILDCARD and action not in ACTIONS[service]:
        known = ", ".join(ACTIONS[service])
        raise InvalidArgument(f"unknown action {action[:32]!r} for {service}; known: {known} (or *)")
    if service in UNNAMED_SERVICES:
        if sep:
            raise InvalidArgument(f"{service} scopes name no pattern: '{service}:{action}'")
        return Scope(service, action, b"", True)
    if action == WILDCARD and not sep:
        return Scope(service, WILDCARD, b"", True)  # 'kv:*': every action on every name
    if not sep or not pattern:
        raise InvalidArgument(f"scope {text[:64]!r} needs a pattern: '{service}:{action}:NAME' or 'NAME*'")
    if WILDCARD in pattern[:-1]:
        raise InvalidArgument("'*' may only end a pattern (a prefix), not stand inside it")
    if pattern.endswith(WILDCARD):
        return Scope(service, action, pattern[:-1].encode(), True)
    return Scope(service, action, pattern.encode(), False)


def parse_scopes(texts: object) -> tuple[Scope, ...]:
    """A token's ``scopes`` claim: a list of at most ``limits.scopes_max`` grants."""
    if not isinstance(texts, list) or len(texts) > limits.scopes_max:
        raise InvalidArgument(f"scopes must be a list of at most {limits.scopes_max} strings")
    return tuple(parse_scope(t) for t in texts)


def allowed(scopes: tuple[Scope, ...], service: str, action: str, name: bytes | None = b"", name_is_prefix: bool = False) -> bool:
    """Deny by default: True only if some grant covers the request."""
    return any(s.allows(service, action, name, name_is_prefix) for s in scopes)


def needed(service: str, action: str, name: bytes | None = b"", name_is_prefix: bool = False) -> str:
    """The scope a refused request needed, for the error message (names cut to a readable length;
    a prefix ends in ``*``; ``name`` None, any one name: ``<any>``)."""
    if service in UNNAMED_SERVICES:
        return f"{service}:{action}"
    if name is None:
        return f"{service}:{action}:<any>"
    shown = name[:64].decode("utf-8", "backslashreplace")
    return f"{service}:{action}:{shown}{WILDCARD if name_is_prefix else ''}"
