"""The one exception tree of trimaran.

Every error a caller can meet is a ``TrimaranError``. Errors that cross the wire carry a short
``code`` string; :func:`error_from_wire` turns a code back into the same class on the client side,
so a caller catches the same types whether it runs in-process or over the network::

    TrimaranError
    ├── ConfigError                  a configuration whose bounds do not fit together
    ├── InvalidArgument              "invalid_argument": bad input from a caller; nothing applied
    │   └── TooLarge                 "too_large": over a size limit (key, value, frame, batch)
    ├── ProtocolError                "protocol_error": a malformed frame or message on the wire
    │   └── FrameTooLarge            "frame_too_large": a frame over frame_bytes_max
    ├── AuthError                    the request was refused for who is asking; nothing applied
    │   ├── Unauthenticated          "unauthenticated": no, bad, expired or revoked token
    │   ├── PermissionDenied         "permission_denied": a valid token without the scope needed
    │   └── TlsError                 "tls_error": the TLS handshake failed (not a TLS node, or a
    │                                certificate the given CA did not sign); raised by the client
    ├── StorageError                 the local disk could not do what was asked
    │   ├── StorageCorruptError      a record failed its CRC or could not be decoded
    │   └── StorageFullError         "storage_full": the store is at its size cap; writes refused
    ├── ClusterError                 the cluster could not serve the request (it may be retried)
    │   ├── NotLeader                "not_leader": ask the node named by ``leader_hint``
    │   ├── Unavailable              "unavailable": no quorum, shutting down, or overloaded
    │   ├── RequestTimeout           "timeout": deadline passed; the outcome is unknown
    │   ├── SessionExpired           "session_expired": exactly-once can no longer be promised
    │   ├── MembershipChangeRejected "membership_rejected": one change at a time, learners first
    │   └── IdleTimeout              "idle_timeout": the node closed an idle connection; nothing
    │                                sent on it after its last answer was processed (reconnect)
    ├── JobFailed                    "job_failed": raised by a job handle's ``result()``: the job
    │                                ended without completing; details ``state``, ``error``, ``attempt``
    └── ServiceError                 a replicated service refused the operation (deterministic)
        ├── OutOfMemory              "out_of_memory": maxmemory reached under noeviction
        ├── RevisionCompacted        "compacted": a watch asked for history no longer kept
        ├── ConditionFailed          "condition_failed": a compare-and-swap precondition did not hold
        ├── LimitExceeded            "limit_exceeded": a bound of the replicated state is reached
        │                            (chat channels, presence sessions or members); details name it
        ├── PresenceExpired          "presence_expired": the chat presence session is unknown or
        │                            lapsed; open a new one and join again
        ├── NotFound                 "not_found": the job, worker session or schedule named does not
        │                            exist (never did, or was purged); details ``kind``, ``id``
        ├── QueueFull                "queue_full": the queue holds queue_jobs_max jobs; nothing enqueued
        ├── StaleLease               "stale_lease": the fencing token is not the job's current lease
        │                            (a newer attempt owns it, or it ended); nothing changed
        └── WorkerSessionLost        "worker_session_lost": the worker session lapsed or was closed and
                                     its jobs were released; open a new one

A programmer error inside trimaran is an ``assert``, not a member of this tree.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TrimaranError(Exception):
    """Root of every error trimaran raises on purpose."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        self.details: dict[str, Any] = details

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-friendly description: ``{"code", "message", "details"}``."""
        return {"code": self.code, "message": self.message, "details": dict(self.details)}


class ConfigError(TrimaranError):
    code = "config_error"


class InvalidArgument(TrimaranError):
    code = "invalid_argument"


class TooLarge(InvalidArgument):
    code = "too_large"


class ProtocolError(TrimaranError):
    code = "protocol_error"


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"


class AuthError(TrimaranError):
    code = "auth_error"


class Unauthenticated(AuthError):
    code = "unauthenticated"


class PermissionDenied(AuthError):
    code = "permission_denied"


class TlsError(AuthError):
    code = "tls_error"


class StorageError(TrimaranError):
    code = "storage_error"


class StorageCorruptError(StorageError):
    code = "storage_corrupt"


class StorageFullError(StorageError):
    code = "storage_full"


class ClusterError(TrimaranError):
    code = "cluster_error"


class NotLeader(ClusterError):
    code = "not_leader"

    def __init__(self, message: str = "", leader_hint: int | None = None, **details: Any) -> None:
        super().__init__(message or "this node is not the leader", leader_hint=leader_hint, **details)
        self.leader_hint = leader_hint


class Unavailable(ClusterError):
    code = "unavailable"


class RequestTimeout(ClusterError):
    code = "timeout"


class SessionExpired(ClusterError):
    code = "session_expired"


class MembershipChangeRejected(ClusterError):
    code = "membership_rejected"


class IdleTimeout(ClusterError):
    code = "idle_timeout"


class JobFailed(TrimaranError):
    code = "job_failed"


class ServiceError(TrimaranError):
    code = "service_error"


class OutOfMemory(ServiceError):
    code = "out_of_memory"


class RevisionCompacted(ServiceError):
    code = "compacted"


class ConditionFailed(ServiceError):
    code = "condition_failed"


class LimitExceeded(ServiceError):
    code = "limit_exceeded"


class PresenceExpired(ServiceError):
    code = "presence_expired"


class NotFound(ServiceError):
    code = "not_found"


class QueueFull(ServiceError):
    code = "queue_full"


class StaleLease(ServiceError):
    code = "stale_lease"


class WorkerSessionLost(ServiceError):
    code = "worker_session_lost"


def _all_subclasses(root: type[TrimaranError]) -> list[type[TrimaranError]]:
    found: list[type[TrimaranError]] = []
    stack = [root]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


_BY_CODE: dict[str, type[TrimaranError]] = {cls.code: cls for cls in _all_subclasses(TrimaranError)}
assert len(_BY_CODE) == len(_all_subclasses(TrimaranError)), "every error class needs its own code"


def error_from_wire(payload: Any) -> TrimaranError:
    """Rebuild a typed error from :meth:`TrimaranError.to_wire` output; unknown codes become the root."""
    if not isinstance(payload, dict):
        return ProtocolError(f"malformed error payload: {payload!r:.200}")
    code = payload.get("code")
    message = payload.get("message")
    details = payload.get("details")
    cls = _BY_CODE.get(code if isinstance(code, str) else "", TrimaranError)
    kwargs = details if isinstance(details, dict) else {}
    kwargs = {str(k): v for k, v in kwargs.items()}
    text = message if isinstance(message, str) else ""
    if cls is NotLeader:
        hint = kwargs.pop("leader_hint", None)
        return NotLeader(text, leader_hint=hint if isinstance(hint, int) else None, **kwargs)
    return cls(text, **kwargs)
