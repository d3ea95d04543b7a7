"""Cluster membership from a client (``c.members``): the operator's steps around Raft's changes.

``add`` records where the new node listens (the replicated members directory, so every node can
reach it), adds it as a learner, and with ``voter=True`` waits until it has caught up before
promoting it; ``remove`` takes a node out and forgets its addresses; ``transfer`` hands leadership
over (to the most caught-up voter when no target is given). Every step needs an ``admin:*`` token.
``list`` merges the leader's view (roles, each member's match index and lag) with the directory.

Failure tolerance is how many voters may be lost with the cluster still serving: ``(voters - 1)
// 2``. The leader refuses the changes that would lose it unexpectedly (see ``Client.membership``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import trio

from trimaran.errors import InvalidArgument, MembershipChangeRejected, RequestTimeout, Unavailable

SERVICE = "members"
#: How often ``add(..., voter=True)`` asks the leader how far the learner is.
CATCH_UP_POLL_S = 0.2
#: Statuses asked while looking for the leader (through redirects and an election).
LEADER_LOOKS_MAX = 50


class _Calls(Protocol):
    async def command(self, service: str, command: Any, *, timeout_ms: int | None = None) -> Any: ...

    async def read(
        self, service: str, query: Any, consistency: str = "linearizable", *, timeout_ms: int | None = None
    ) -> Any: ...

    async def status(self, *, timeout_ms: int | None = None) -> dict[str, Any]: ...

    async def node_status(self, address: str, *, timeout_ms: int | None = None) -> dict[str, Any]: ...

    async def membership(self, kind: str, node_id: int, *, force: bool = False, timeout_ms: int | None = None) -> Any: ...

    async def transfer(self, node_id: int, *, timeout_ms: int | None = None) -> None: ...


def failure_tolerance(voters: int) -> int:
    """Voters that may fail with a majority left."""
    return max(0, (voters - 1) // 2)


@dataclass(frozen=True, slots=True)
class MemberInfo:
    node_id: int
    role: str  # "leader", "voter" or "learner"
    #: Where its clients and peers connect (None: not known to the leader).
    client_address: str | None
    peer_address: str | None
    #: Highest log index known to be on it (the leader's own: its last index), and how far behind.
    match_index: int
    lag: int
    #: It answered the leader recently (the leader always counts as active).
    active: bool


class MembersClient:
    """``c.members`` on an async client."""

    def __init__(self, client: _Calls) -> None:
        self._client = client

    async def list(self, *, timeout_ms: int | None = None) -> list[MemberInfo]:
        """Every member, from the leader's view (raises if the node asked is not the leader)."""
        status = await self._leader_status(timeout_ms)
        directory = {row[0]: (row[1], row[2]) for row in await self._client.read(SERVICE, ["list"], timeout_ms=timeout_ms)}
        progress = {p["node_id"]: p for p in status["progress"]}
        out = []
        for m in status["members"]:
            n = m["node_id"]
            pr = progress.get(n)
            leader = n == status["node_id"]
            peer, client = directory.get(n, (None, None))
            out.append(
                MemberInfo(
                    n,
                    "leader" if leader else m["role"],
                    client or m["address"],
                    peer or m.get("peer_address"),
                    status["last_index"] if leader else (pr["match"] if pr else 0),
                    0 if leader else (pr["lag"] if pr else status["last_index"]),
                    leader or bool(pr and pr["recent_active"]),
                )
            )
        return out

    async def add(
        self,
        node_id: int,
        peer_address: str | None = None,
        client_address: str | None = None,
        *,
        voter: bool = False,
        catch_up_timeout_s: float = 300.0,
        progress: Callable[[int, int], None] | None = None,
        timeout_ms: int | None = None,
    ) -> dict[str, Any]:
        """Add ``node_id`` (started with ``trimaran node run --join``) as a learner, after recording
        its addresses (omit them for a node every member already has in its ``--peer`` flags).
        ``voter=True``: wait until it has caught up (``progress(match_index, leader_last_index)``
        after each look), then promote it. Returns the new membership."""
        if peer_address is not None:
            await self.record(node_id, peer_address, client_address, timeout_ms=timeout_ms)
        members = await self._client.membership("add_learner", node_id, timeout_ms=timeout_ms)
        if voter:
            with trio.move_on_after(catch_up_timeout_s):
                while True:
                    await self.wait_caught_up(node_id, timeout_s=catch_up_timeout_s, progress=progress)
                    try:
                        members = await self._client.membership("promote", node_id, timeout_ms=timeout_ms)
                        return dict(members)
                    except MembershipChangeRejected as exc:
                        if "has not caught up" not in exc.message:
                            raise
                    await trio.sleep(CATCH_UP_POLL_S)  # fell behind again, or not heard from lately
            raise MembershipChangeRejected(f"node {node_id} did not catch up within {catch_up_timeout_s:.0f} s", reason="catch_up")
        return dict(members)

    async def wait_caught_up(
        self, node_id: int, *, timeout_s: float = 300.0, lag_max: int = 64, progress: Callable[[int, int], None] | None = None
    ) -> None:
        """Until the leader sees ``node_id`` within ``lag_max`` entries of its log (a learner
        installing a snapshot first shows no progress, then jumps); ``MembershipChangeRejected``
        after ``timeout_s``."""
        with trio.move_on_after(timeout_s):
            while True:
                status = await self._leader_status(None)
                pr = next((p for p in status["progress"] if p["node_id"] == node_id), None)
                if pr is None:
                    raise InvalidArgument(f"node {node_id} is not a member")
                if progress is not None:
                    progress(pr["match"], status["last_index"])
                if pr["lag"] <= lag_max and pr["match"] > 0:  # match 0: never heard from yet
                    return
                await trio.sleep(CATCH_UP_POLL_S)
        raise MembershipChangeRejected(f"node {node_id} did not catch up within {timeout_s:.0f} s", reason="catch_up")

    async def promote(self, node_id: int, *, timeout_ms: int | None = None) -> dict[str, Any]:
        """Make learner ``node_id`` a voter (Raft refuses one that has not caught up)."""
        return dict(await self._client.membership("promote", node_id, timeout_ms=timeout_ms))

    async def remove(self, node_id: int, *, force: bool = False, timeout_ms: int | None = None) -> dict[str, Any]:
        """Take ``node_id`` out of the cluster, then forget its addresses. Refused without ``force``
        for the leader itself (transfer first) and for a voter of a 2-voter cluster."""
        members = await self._client.membership("remove", node_id, force=force, timeout_ms=timeout_ms)
        await self._client.command(SERVICE, ["forget", node_id], timeout_ms=timeout_ms)
        return dict(members)

    async def record(self, node_id: int, peer_address: str, client_address: str | None = None, *, timeout_ms: int | None = None) -> bool:
        """Record (or change) where ``node_id`` listens; every node dials it there from then on."""
        return bool(await self._client.command(SERVICE, ["set", node_id, peer_address, client_address], timeout_ms=timeout_ms))

    async def transfer(self, to: int | None = None, *, timeout_ms: int | None = None) -> int:
        """Hand leadership to voter ``to`` (None: the most caught-up other voter); returns the target.
        Returns once the leader has started the hand-over; ``status()`` shows when it is done."""
        status = await self._leader_status(timeout_ms)
        if to is None:
            others = [p for p in status["progress"] if p["node_id"] in status["voters"] and p["node_id"] != status["node_id"]]
            if not others:
                raise MembershipChangeRejected("no other voter to hand leadership to", reason="no_voter")
            to = min(others, key=lambda p: (p["lag"], p["node_id"]))["node_id"]
        await self._client.transfer(to, timeout_ms=timeout_ms)
        return to

    async def _leader_status(self, timeout_ms: int | None) -> dict[str, Any]:
        """The leader's status (only the leader knows each member's progress)."""
        status = await self._client.status(timeout_ms=timeout_ms)
        for _ in range(LEADER_LOOKS_MAX):
            if status.get("role") == "leader":
                return status
            if status.get("leader_address"):
                try:
                    status = await self._client.node_status(status["leader_address"], timeout_ms=timeout_ms)
                    continue
                except (Unavailable, RequestTimeout):
                    pass  # the leader it names just went down: ask again once an election ran
            await trio.sleep(CATCH_UP_POLL_S)  # an election is under way
            status = await self._client.status(timeout_ms=timeout_ms)
        raise MembershipChangeRejected("no leader answered; is a majority of the voters up?", reason="no_leader")


class SyncMembersClient:
    """``c.members`` on a blocking client: the same methods, each run to completion."""

    def __init__(self, inner: MembersClient, call: Callable[..., Any]) -> None:
        self._inner = inner
        self._call = call

    def list(self, *, timeout_ms: int | None = None) -> list[MemberInfo]:
        members: list[MemberInfo] = self._call(self._inner.list, timeout_ms=timeout_ms)
        return members

    def add(self, node_id: int, peer_address: str | None = None, client_address: str | None = None, **options: Any) -> dict[str, Any]:
        """Blocking :meth:`MembersClient.add` (``voter=True`` blocks until the node caught up)."""
        return dict(self._call(self._inner.add, node_id, peer_address, client_address, **options))

    def wait_caught_up(self, node_id: int, **options: Any) -> None:
        self._call(self._inner.wait_caught_up, node_id, **options)

    def promote(self, node_id: int, *, timeout_ms: int | None = None) -> dict[str, Any]:
        return dict(self._call(self._inner.promote, node_id, timeout_ms=timeout_ms))

    def remove(self, node_id: int, *, force: bool = False, timeout_ms: int | None = None) -> dict[str, Any]:
        return dict(self._call(self._inner.remove, node_id, force=force, timeout_ms=timeout_ms))

    def record(self, node_id: int, peer_address: str, client_address: str | None = None, *, timeout_ms: int | None = None) -> bool:
        return bool(self._call(self._inner.record, node_id, peer_address, client_address, timeout_ms=timeout_ms))

    def transfer(self, to: int | None = None, *, timeout_ms: int | None = None) -> int:
        return int(self._call(self._inner.transfer, to, timeout_ms=timeout_ms))
