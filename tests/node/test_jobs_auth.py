"""Job queue scopes at the client edge of a real in-process node with auth on: every jobs command and
query is checked against its queue (``jobs:enqueue|work|read|manage:QUEUE``), ids are mapped to
their queue, and each refusal is the exact ``PermissionDenied`` naming the scope needed, with nothing
changed (the services' snapshots and the log's last index are the same before and after)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Awaitable

import pytest
import trio

import trimaran
from trimaran import errors
from trimaran.client.client import Client
from trimaran.client.jobs import Completion
from trimaran.node.node import Node

from tests.node.helpers import in_process_cluster
from tests.node.test_auth_edge import Signer, state_of


@pytest.fixture(scope="module")
def key() -> Signer:
    return Signer("jobs-key")


@pytest.fixture
async def node(tmp_path: Path, key: Signer) -> AsyncIterator[Node]:
    async with in_process_cluster(tmp_path, 1, auth_keys=(key.trusted,), auth_leeway_ms=0) as cluster:
        await cluster.leader()
        yield cluster.nodes[1]


def connect(node: Node, key: Signer, *scopes: str) -> Client:
    return trimaran.connect(str(node.client_address), token=key.token(list(scopes)), timeout_ms=2_000)


async def denied(node: Node, call: Awaitable[Any], scope: str) -> None:
    """``call`` is refused PermissionDenied naming exactly ``scope``, and changes nothing."""
    before = state_of(node)
    with pytest.raises(errors.PermissionDenied) as info:
        await call
    assert info.value.details["scope"] == scope, info.value.details
    assert state_of(node) == before


async def test_each_action_is_scoped_to_its_queue(node: Node, key: Signer) -> None:
    async with connect(node, key, "admin:*") as admin:
        email = await admin.jobs.enqueue("emails", {"to": "a"})
        sms = await admin.jobs.enqueue("sms", {"to": "b"})
        await admin.jobs.schedule("nightly-sms", "sms", None, every_ms=60_000)
    async with connect(node, key, "jobs:enqueue:emails") as producer:
        assert (await producer.jobs.enqueue("emails", 1)).count("-") == 1
        await denied(node, producer.jobs.enqueue("sms", 1), "jobs:enqueue:sms")
        batch = [trimaran.client.jobs.NewJob("emails", 1), trimaran.client.jobs.NewJob("sms", 2)]
        await denied(node, producer.jobs.enqueue_batch(batch), "jobs:enqueue:sms")  # all or nothing
        await denied(node, producer.jobs.open_session("w", 10_000), "jobs:work:<any>")
        await denied(node, producer.jobs.claim("s1-0", ["emails"]), "jobs:work:emails")
        await denied(node, producer.jobs.job(email), "jobs:read:emails")
        await denied(node, producer.jobs.cancel(email), "jobs:manage:emails")
        await denied(node, producer.jobs.stats("emails"), "jobs:read:emails")
        await denied(node, producer.jobs.pause("emails"), "jobs:manage:emails")
        # Depending on a job reads its outcome: the dependency's queue must be readable.
        await denied(node, producer.jobs.enqueue("emails", 1, depends_on=[sms]), "jobs:read:sms")
    async with connect(node, key, "jobs:work:emails", "jobs:read:emails") as worker:
        session = await worker.jobs.open_session("w1", 10_000)
        await denied(node, worker.jobs.claim(session.session, ["emails", "sms"]), "jobs:work:sms")
        claim = await worker.jobs.claim(session.session, ["emails"], 10)
        assert {lease.id for lease in claim.jobs} >= {email}
        lease = next(lease for lease in claim.jobs if lease.id == email)
        await denied(node, worker.jobs.complete(sms, 1), "jobs:work:sms")  # another queue's job
        both = [Completion.of(email, lease.token, "sent"), Completion.of(sms, 1)]
        await denied(node, worker.jobs.complete_batch(both), "jobs:work:sms")  # refused whole: email still runs
        await denied(node, worker.jobs.result(sms), "jobs:read:sms")
        await denied(node, worker.jobs.schedules(), "jobs:read:*")
        await denied(node, worker.jobs.cancel(email), "jobs:manage:emails")
        await denied(node, worker.jobs.dlq_requeue("emails"), "jobs:manage:emails")
        assert await worker.jobs.complete(email, lease.token, "sent") == "completed"
        assert (await worker.jobs.result(email)).state == "completed"  # type: ignore[union-attr]
        # Unknown ids need the action on some queue: the service answers, telling nothing more.
        with pytest.raises(errors.StaleLease):
            await worker.jobs.complete("1-999", 5)
        assert await worker.jobs.complete_batch([Completion.of("1-999", 5), Completion.of(email, lease.token)]) == ["stale_lease"] * 2
        assert await worker.jobs.job("2-999") is None
    async with connect(node, key, "jobs:manage:emails") as manager:
        assert await manager.jobs.pause("emails") is True  # (the client's first command registers it)
        await denied(node, manager.jobs.schedule("nightly-sms", "emails", None, every_ms=1_000), "jobs:manage:sms")  # replaces sms's
        await denied(node, manager.jobs.unschedule("nightly-sms"), "jobs:manage:sms")
        assert await manager.jobs.unschedule("no-such-schedule") is False
        await denied(node, manager.jobs.cancel(sms), "jobs:manage:sms")


async def test_another_tenants_session_cannot_be_closed_or_kept_alive(node: Node, key: Signer) -> None:
    async with connect(node, key, "admin:*") as admin:
        await admin.jobs.enqueue("sms", 1)
    async with connect(node, key, "jobs:work:sms") as owner, connect(node, key, "jobs:work:emails") as other:
        session = await owner.jobs.open_session("w1", 10_000)
        lease = (await owner.jobs.claim(session.session, ["sms"])).jobs[0]
        mine = await other.jobs.open_session("w2", 10_000)
        await denied(node, other.jobs.close_session(session.session), "jobs:work:sms")
        await denied(node, other.jobs.heartbeat(session.session), "jobs:work:sms")
        await denied(node, other.jobs.session(session.session), "jobs:work:sms")
        await denied(node, other.jobs.release(lease.id, lease.token), "jobs:work:sms")
        assert await owner.jobs.release(lease.id, lease.token) == "ready"
        # Its own empty session and an unknown one: any work grant will do.
        await other.jobs.heartbeat(mine.session)
        with pytest.raises(errors.WorkerSessionLost):
            await other.jobs.heartbeat("s3-7")


async def test_an_id_past_what_the_node_applied_is_unavailable_not_judged(node: Node, key: Signer) -> None:
    """A job id from the future may sit in the log unapplied: judging it on today's state would let
    a token act on another queue's job once it applies, so it is refused Unavailable (retryable)."""
    assert node.driver is not None
    future = f"{node.driver.replica.applied_index + 1_000}-0"
    async with connect(node, key, "jobs:manage:emails") as manager:
        await manager.jobs.pause("emails")
        before = state_of(node)
        with trio.fail_after(10):
            # The client retries Unavailable until its deadline, then says why.
            with pytest.raises(errors.RequestTimeout, match=f"unavailable: {future} is not applied on this node yet"):
                await manager.jobs.cancel(future, timeout_ms=500)
        assert state_of(node)[0]["jobs"] == before[0]["jobs"]
