"""Auth at the client edge of a real (in-process, loopback) node: the hostile-token suite, scopes per
request, revocation and retirement through the log, live connections closed, auth off unchanged.

Every refusal is checked for its exact typed error and for changing nothing: the services'
snapshots and the log's last index are the same before and after.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from pathlib import Path
from typing import Any, AsyncIterator

import pyseto
import pytest
import trio

import trimaran
from trimaran.errors import ConfigError, InvalidArgument, TrimaranError, error_from_wire
from trimaran.node.backup_restore import read_backup, restore
from trimaran.node.config import Address
from trimaran.node.data_dir import auth_required, check_auth
from trimaran.node.node import Node, first_error
from trimaran.protocols import backup_file, tokens
from trimaran.protocols.client_protocol import hello
from trimaran.protocols.messages import Membership, SnapshotMeta
from trimaran.protocols.tokens import TrustedKey

from tests.node.helpers import RawClient, in_process_cluster

CLUSTER = "trimaran"
TIMEOUT_S = 10


class Signer:
    def __init__(self, kid: str | None = None) -> None:
        self.private = tokens.new_private_key()
        self.public = tokens.public_key_of(self.private)
        self.kid = kid or tokens.key_id(self.public)
        self._next_jti = 0

    @property
    def trusted(self) -> TrustedKey:
        return TrustedKey(self.kid, self.public)

    def token(self, scopes: list[str], **changes: Any) -> str:
        self._next_jti += 1
        args: dict[str, Any] = dict(
            kid=self.kid, sub="alice", scopes=scopes, audience=CLUSTER, now_ms=now_ms(), ttl_ms=600_000, jti=f"{self.kid}-{self._next_jti}"
        )
        args.update(changes)
        return tokens.sign(self.private, **args)


def now_ms() -> int:
    return int(time.time() * 1000)


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def with_footer(token: str, footer: bytes) -> str:
    parts = token.encode().split(b".")
    return b".".join(parts[:3] + [b64(footer)]).decode()


def signed_claims(signer: Signer, claims: dict[str, Any]) -> str:
    key = pyseto.Key.new(4, "public", signer.private)
    return pyseto.encode(key, json.dumps(claims).encode(), footer=json.dumps({"kid": signer.kid}).encode()).decode()


@pytest.fixture(scope="module")
def admin_key() -> Signer:
    return Signer("admin-key")


@pytest.fixture(scope="module")
def user_key() -> Signer:
    return Signer("user-key")


@pytest.fixture
async def node(tmp_path: Path, admin_key: Signer, user_key: Signer) -> AsyncIterator[Node]:
    async with in_process_cluster(tmp_path, 1, auth_keys=(admin_key.trusted, user_key.trusted), auth_leeway_ms=0) as cluster:
        await cluster.leader()
        yield cluster.nodes[1]


def address_of(node: Node) -> Address:
    assert node.client_address is not None
    return node.client_address


def state_of(node: Node) -> Any:
    """Everything a request could change: each service's snapshot, the sessions, the log."""
    assert node.driver is not None
    replica = node.driver.replica
    services = {name: svc.snapshot() for name, svc in sorted(replica.services.items())}
    return services, replica.sessions.snapshot(True), replica.raft.log.last_index()


async def hello_refusal(node: Node, hello_obj: dict[str, Any]) -> TrimaranError:
    """Send a hello; the node must answer one error frame and close. Returns the error."""
    stream = await trio.open_tcp_stream(address_of(node).host, address_of(node).port)
    client = RawClient(stream)
    try:
        with trio.fail_after(TIMEOUT_S):
            await client.send_obj(hello_obj)
            answer = await client.read_obj()
            assert isinstance(answer, dict) and answer.get("type") == "error", answer
            assert await client.read_obj() is None, "the node must close after refusing the hello"
    finally:
        await client.aclose()
    return error_from_wire(answer["error"])


async def connect(node: Node, token: str | None) -> RawClient:
    stream = await trio.open_tcp_stream(address_of(node).host, address_of(node).port)
    client = RawClient(stream)
    await client.send_obj(hello(None, token))
    welcome = await client.read_obj()
    if isinstance(welcome, dict) and welcome.get("type") == "error":
        await client.aclose()
        raise error_from_wire(welcome["error"])
    assert isinstance(welcome, dict) and welcome.get("type") == "welcome", welcome
    return client


async def kv_command(client: RawClient, command: list[Any]) -> Any:
    client.seq += 1
    body = {"client_id": client.client_id, "seq": client.seq, "ack_seq": client.seq - 1, "service": "kv", "command": command}
    return await client.call("command", body)


async def kv_read(client: RawClient, query: list[Any]) -> Any:
    return await client.call("read", {"service": "kv", "query": query})


async def auth_command(client: RawClient, command: list[Any]) -> Any:
    client.seq += 1
    body = {"client_id": client.client_id, "seq": client.seq, "ack_seq": client.seq - 1, "service": "auth", "command": command}
    return await client.call("command", body)


async def admin(node: Node, admin_key: Signer) -> RawClient:
    client = await connect(node, admin_key.token(["admin:*"]))
    await client.register()
    return client


# ------------------------------------------------------------------------------- the hello


def hostile_tokens(admin_key: Signer, user_key: Signer) -> list[tuple[str, Any, str]]:
    """(case, the hello's token, words the refusal's message must hold)."""
    good = user_key.token(["kv:*"])
    parts = good.encode().split(b".")
    body = base64.urlsafe_b64decode(parts[2] + b"=" * (-len(parts[2]) % 4))
    tampered = b".".join(parts[:2] + [b64(bytes([body[0] ^ 1]) + body[1:]), parts[3]]).decode()
    impostor = Signer(user_key.kid)  # another private key claiming the user key's kid
    t = now_ms()
    claims = {"sub": "mallory", "jti": "j-noexp", "aud": CLUSTER, "scopes": ["admin:*"]}
    return [
        ("no token", None, "requires a token"),
        ("empty", "", "no token"),
        ("tampered payload", tampered, "signature"),
        ("tampered footer", with_footer(good, json.dumps({"kid": user_key.kid, "x": 1}).encode()), "signature"),
        ("swapped kid", with_footer(admin_key.token(["admin:*"]), json.dumps({"kid": user_key.kid}).encode()), "signature"),
        ("impostor key", impostor.token(["admin:*"]), "signature"),
        ("unknown kid", with_footer(good, b'{"kid":"nobody"}'), "unknown key id"),
        ("v4.local header", "v4.local." + good[len("v4.public."):], "only v4.public"),
        ("v3.public header", "v3.public." + good[len("v4.public."):], "only v4.public"),
        ("wrong audience", user_key.token(["kv:*"], audience="another-cluster"), "another cluster"),
        ("expired", user_key.token(["kv:*"], now_ms=t - 120_000, ttl_ms=60_000), "expired"),
        ("not yet valid", user_key.token(["kv:*"], now_ms=t + 120_000), "not yet valid"),
        ("missing exp", signed_claims(user_key, claims), "no expiry"),
        ("oversized", "v4.public." + "A" * 9000, "token_bytes_max"),
        ("non-ASCII text", "v4.public.\u00e9t\u00e9", "not ASCII"),
        ("not text (msgpack bin, not UTF-8)", b"\xff\xfe", "string of ASCII text"),
    ]


async def test_hostile_tokens_are_refused_at_the_hello_and_change_nothing(node: Node, admin_key: Signer, user_key: Signer) -> None:
    before = state_of(node)
    refused_before = node.status()["metrics"]["client_auth_unauthenticated"]
    cases = hostile_tokens(admin_key, user_key)
    for case, token, words in cases:
        exc = await hello_refusal(node, {"type": "hello", "version": 1, "cluster_id": None, "token": token})
        assert exc.code == "unauthenticated", (case, exc.code, exc.message)
        assert words in exc.message, (case, exc.message)
        assert user_key.public.hex() not in exc.message and (token is None or not token or str(token)[-20:] not in exc.message), case
    assert state_of(node) == before
    metrics = node.status()["metrics"]
    assert metrics["client_auth_unauthenticated"] == refused_before + len(cases)
    assert metrics["client_protocol_errors"] == 0  # refused tokens are not malformed hellos


async def test_a_hello_whose_token_is_not_utf8_msgpack_is_not_a_hello_at_all(node: Node) -> None:
    """A msgpack str holding bytes that are not UTF-8 does not decode: the frame is not a hello
    (protocol_error, as for any malformed frame), before any token is looked at."""
    from trimaran.protocols.framing import encode_frame

    frame = b"\x84\xa4type\xa5hello\xa7version\x01\xaacluster_id\xc0\xa5token\xa2\xff\xfe"
    stream = await trio.open_tcp_stream(address_of(node).host, address_of(node).port)
    client = RawClient(stream)
    try:
        await client.stream.send_all(encode_frame(frame))
        with trio.fail_after(TIMEOUT_S):
            answer = await client.read_obj()
        assert error_from_wire(answer["error"]).code == "protocol_error"
    finally:
        await client.aclose()


async def test_a_retired_key_is_refused_once_the_retirement_is_applied(tmp_path: Path, admin_key: Signer) -> None:
    doomed = Signer("doomed-key")
    async with in_process_cluster(tmp_path, 1, auth_keys=(admin_key.trusted, doomed.trusted), auth_leeway_ms=0) as cluster:
        await cluster.leader()
        node = cluster.nodes[1]
        token = doomed.token(["kv:*"])
        await (await connect(node, token)).aclose()  # trusted until now
        ops = await admin(node, admin_key)
        assert await auth_command(ops, ["retire", "doomed-key"]) is True
        before = state_of(node)
        exc = await hello_refusal(node, hello(None, token))
        assert (exc.code, exc.message) == ("unauthenticated", "key 'doomed-key' is retired")
        assert state_of(node) == before
        await ops.aclose()


async def test_a_revoked_token_is_refused_at_the_hello(node: Node, admin_key: Signer, user_key: Signer) -> None:
    token = user_key.token(["kv:*"], jti="to-revoke")
    ops = await admin(node, admin_key)
    assert await auth_command(ops, ["revoke", "to-revoke", 0]) is True
    before = state_of(node)
    exc = await hello_refusal(node, hello(None, token))
    assert (exc.code, exc.message, exc.details) == ("unauthenticated", "token revoked", {"reason": "revoked"})
    assert state_of(node) == before
    await ops.aclose()


# ------------------------------------------------------------------------------- every request


async def test_scopes_are_checked_on_every_request_and_refusals_change_nothing(node: Node, admin_key: Signer, user_key: Signer) -> None:
    ops = await admin(node, admin_key)
    await kv_command(ops, ["set", b"a1", b"x"])
    await kv_command(ops, ["set", b"b1", b"y"])
    reader = await connect(node, user_key.token(["kv:read:a*"]))
    await reader.register()  # any valid token may open a session
    assert (await kv_read(reader, ["get", b"a1"]))[0] == b"x"
    assert [e[0] for e in await kv_read(reader, ["mget", [b"a1", b"a2"]]) if e] == [b"x"]
    assert [i[0] for i in (await kv_read(reader, ["scan", b"a"]))["items"]] == [b"a1"]

    refusals: list[tuple[str, dict[str, Any], str]] = [
        ("command", {"service": "kv", "command": ["set", b"a1", b"z"]}, "kv:write:a1"),
        ("command", {"service": "kv", "command": ["mset", [[b"a2", b"z"], [b"a3", b"z"]]]}, "kv:write:a2"),
        ("command", {"service": "kv", "command": ["delete", b"b1"]}, "kv:write:b1"),
        ("read", {"service": "kv", "query": ["get", b"b1"]}, "kv:read:b1"),
        ("read", {"service": "kv", "query": ["mget", [b"a1", b"b1"]]}, "kv:read:b1"),
        ("read", {"service": "kv", "query": ["scan", b""]}, "kv:read:*"),
        ("read", {"service": "kv", "query": ["watch", b"", 0, {"prefix": True}]}, "kv:read:*"),
        ("read", {"service": "kv", "query": ["stats"]}, "kv:read:*"),
        ("status", {}, "cluster:read"),
        ("membership", {"kind": "add_learner", "node_id": 9}, "admin:*"),
        ("transfer", {"node_id": 1}, "admin:*"),
        ("command", {"service": "register", "command": ["set", b"k", b"v"]}, "admin:*"),
        ("command", {"service": "auth", "command": ["revoke", "x", 0]}, "admin:*"),
        ("read", {"service": "auth", "query": ["keys"]}, "admin:*"),
    ]
    before = state_of(node)
    for op, body, scope in refusals:
        if op == "command":
            reader.seq += 1
            body = {"client_id": reader.client_id, "seq": reader.seq, "ack_seq": reader.seq - 1, **body}
        with pytest.raises(TrimaranError) as info:
            await reader.call(op, body)
        assert (info.value.code, info.value.details) == ("permission_denied", {"scope": scope}), (op, body)
        assert scope in info.value.message
    assert state_of(node) == before
    # The connection stays open and usable for what the token grants.
    assert (await kv_read(reader, ["get", b"a1"]))[0] == b"x"
    # A kv command that does not parse cannot be authorised: the service's own error, at the edge.
    with pytest.raises(TrimaranError) as info:
        await kv_command(reader, ["set", b"a1"])
    assert info.value.code == "invalid_argument"
    assert state_of(node) == before
    await reader.aclose()
    await ops.aclose()


async def test_a_token_that_expires_while_connected_is_refused_at_the_next_request(node: Node, user_key: Signer) -> None:
    client = await connect(node, user_key.token(["kv:*", "cluster:read"], ttl_ms=1_000))
    await client.call("status", {})
    await trio.sleep(1.1)
    before = state_of(node)
    with pytest.raises(TrimaranError) as info:
        await client.call("status", {})
    assert (info.value.code, info.value.message, info.value.details) == ("unauthenticated", "token expired", {"reason": "expired"})
    assert state_of(node) == before
    await client.aclose()


async def test_revoking_a_live_connections_token_closes_it_within_one_apply_round(node: Node, admin_key: Signer, user_key: Signer) -> None:
    victim = await connect(node, user_key.token(["kv:*"], jti="live-one"))
    bystander = await connect(node, user_key.token(["kv:*"], jti="other-one"))
    await victim.register()
    await kv_command(victim, ["set", b"v", b"1"])
    ops = await admin(node, admin_key)
    assert await auth_command(ops, ["revoke", "live-one", 0]) is True
    # The revoke's answer came after its apply round ended, so the close frame is already sent.
    with trio.fail_after(0.5):
        frame = await victim.read_obj()
        assert await victim.read_obj() is None
    exc = error_from_wire(frame["error"])
    assert (exc.code, exc.message, exc.details) == ("unauthenticated", "token revoked", {"reason": "revoked"})
    assert node.status()["metrics"]["client_auth_connections_closed"] == 1
    # Another token's connection is untouched.
    await bystander.register()
    await kv_command(bystander, ["set", b"w", b"2"])
    await victim.aclose()
    await bystander.aclose()
    await ops.aclose()


async def test_retiring_a_key_closes_the_live_connections_it_signed(tmp_path: Path, admin_key: Signer) -> None:
    doomed = Signer("doomed-key")
    async with in_process_cluster(tmp_path, 1, auth_keys=(admin_key.trusted, doomed.trusted), auth_leeway_ms=0) as cluster:
        await cluster.leader()
        node = cluster.nodes[1]
        victim = await connect(node, doomed.token(["kv:*"]))
        ops = await admin(node, admin_key)
        assert await auth_command(ops, ["retire", "doomed-key"]) is True
        with trio.fail_after(0.5):
            frame = await victim.read_obj()
        exc = error_from_wire(frame["error"])
        assert (exc.code, exc.details) == ("unauthenticated", {"reason": "key_retired"})
        await kv_command(ops, ["set", b"still", b"here"])  # the admin key's connection is untouched
        await victim.aclose()
        await ops.aclose()


# ------------------------------------------------------------------------------- auth off


async def test_a_node_without_auth_keys_behaves_as_before(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 1) as cluster:
        await cluster.leader()
        node = cluster.nodes[1]
        assert not node.config.auth_enabled and "auth" not in node.config.state_machine_settings()
        client = await connect(node, "not a token at all")  # the token is ignored
        await client.register()
        await kv_command(client, ["set", b"k", b"v"])
        assert (await kv_read(client, ["get", b"k"]))[0] == b"v"
        assert (await client.call("status", {}))["role"] == "leader"
        await client.aclose()
        anonymous = await connect(node, None)
        await anonymous.call("status", {})
        await anonymous.aclose()


async def test_data_served_with_auth_is_not_served_without_it_after_a_restart_or_a_restore(
    tmp_path: Path, admin_key: Signer
) -> None:
    """Auth is a node's configuration, not the log's: a node restarted, or a cluster restored from a
    backup, without its --auth-public-key would serve the same data to anyone. The data dir (and a
    backup) remembers that tokens were required, and such a node refuses to start without a key
    unless it is told --allow-auth-off (not --insecure, which is about listening beyond loopback)."""
    backup = tmp_path / "c.backup"
    async with in_process_cluster(tmp_path / "source", 1, auth_keys=(admin_key.trusted,)) as cluster:
        await cluster.leader()
        source = cluster.nodes[1]
        assert auth_required(source.config.data_dir)
        async with trimaran.connect([str(address_of(source))], token=admin_key.token(["admin:*"])) as c:
            await c.kv.set("secret", "42")
            header = await c.backup(str(backup))
    assert header["auth_required"] is True
    restored, _ = read_backup(backup)
    assert restored.auth_required and restored.index == header["index"]

    # The source node's own data dir, restarted without its key; a restored one likewise.
    restore(backup, tmp_path / "restored" / "node1", 1)
    for root in (tmp_path / "source", tmp_path / "restored"):
        with pytest.raises(BaseException) as refused:
            async with in_process_cluster(root, 1):
                pass
        error = first_error(refused.value)
        assert isinstance(error, ConfigError) and "without auth" in error.message, error
        assert "--auth-public-key" in error.message and "--allow-auth-off" in error.message
    with pytest.raises(BaseException) as refused:  # --insecure does not silence it
        async with in_process_cluster(tmp_path / "restored", 1, insecure=True):
            pass
    assert isinstance(first_error(refused.value), ConfigError)
    async with in_process_cluster(tmp_path / "restored", 1, allow_auth_off=True) as cluster:  # the operator's choice
        await cluster.leader()
        async with trimaran.connect([str(address_of(cluster.nodes[1]))]) as c:
            assert (await c.kv.get("secret")).value == b"42"
            # Its backups keep the guard, though it runs with auth off.
            assert (await c.backup(str(tmp_path / "again.backup")))["auth_required"] is True
    async with in_process_cluster(tmp_path / "restored", 1, auth_keys=(admin_key.trusted,)) as cluster:
        await cluster.leader()
        refusal = await hello_refusal(cluster.nodes[1], hello(CLUSTER, None))
        assert refusal.code == "unauthenticated"


def test_a_backup_header_says_whether_its_cluster_required_tokens(tmp_path: Path) -> None:
    meta = SnapshotMeta(9, 2, Membership((1, 2, 3)), 3, zlib.crc32(b"abc"))
    for required in (False, True):
        header = backup_file.header_for("c1", meta, "00", required)
        assert header.to_dict()["version"] == 2
        assert backup_file.header_from(header.to_dict()).auth_required is required
    current = backup_file.header_for("c1", meta, "00", True).to_dict()
    version_1 = {k: v for k, v in current.items() if k != "auth_required"} | {"version": 1}
    assert backup_file.header_from(version_1).auth_required is False  # it had no such field
    # Never read loosely as false: a version-2 header must say it, as a boolean.
    with pytest.raises(InvalidArgument, match="malformed"):
        backup_file.header_from({k: v for k, v in current.items() if k != "auth_required"})
    with pytest.raises(InvalidArgument, match="auth_required"):
        backup_file.header_from(current | {"auth_required": "yes"})
    with pytest.raises(InvalidArgument, match="version 3"):
        backup_file.header_from(current | {"version": 3})


def test_a_data_dir_marked_as_requiring_auth_refuses_a_node_without_it(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "n1")
    assert check_auth(data_dir, auth_enabled=False, allow_auth_off=False) is False and not auth_required(data_dir)
    assert check_auth(data_dir, auth_enabled=True, allow_auth_off=False) is False and auth_required(data_dir)
    assert check_auth(data_dir, auth_enabled=True, allow_auth_off=False) is False  # again: unchanged
    with pytest.raises(ConfigError):
        check_auth(data_dir, auth_enabled=False, allow_auth_off=False)
    assert check_auth(data_dir, auth_enabled=False, allow_auth_off=True) is True  # the caller logs it
    assert auth_required(data_dir)  # --allow-auth-off is for this run only


# ------------------------------------------------------------------------------- peers


async def test_nodes_with_different_bootstrap_keys_refuse_each_other(tmp_path: Path, admin_key: Signer, user_key: Signer) -> None:
    from tests.node.helpers import InProcessCluster, cluster_configs

    first, second = cluster_configs(tmp_path, 2, auth_keys=(admin_key.trusted,))
    second = second.replace(auth_keys=(user_key.trusted,)).validate()
    assert first.state_machine_settings() != second.state_machine_settings()
    async with trio.open_nursery() as nursery:
        cluster = InProcessCluster([first, second], nursery)
        await cluster.start(1)
        await cluster.start(2)

        def refused_both_ways() -> bool:
            return all(n.transport is not None and n.transport.connections_refused > 0 for n in cluster.nodes.values())

        await cluster.wait_for(refused_both_ways, TIMEOUT_S, "each node refusing the other's handshake")
        assert all(n.status()["role"] != "leader" for n in cluster.nodes.values())  # no quorum of two
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------- configuration


def test_auth_keys_load_from_pem_or_raw_files_with_an_optional_kid(tmp_path: Path, user_key: Signer) -> None:
    from trimaran.errors import ConfigError
    from trimaran.node.config import load_auth_key

    pem, raw = tmp_path / "key.pem", tmp_path / "key.raw"
    pem.write_bytes(tokens.public_key_pem(user_key.public))
    raw.write_bytes(user_key.public)
    default_kid = tokens.key_id(user_key.public)
    assert load_auth_key(str(pem)) == TrustedKey(default_kid, user_key.public)
    assert load_auth_key(str(raw)) == TrustedKey(default_kid, user_key.public)
    assert load_auth_key(f"k2={pem}") == TrustedKey("k2", user_key.public)
    (tmp_path / "junk").write_bytes(b"not a key")
    for spec in (str(tmp_path / "missing"), str(tmp_path / "junk"), f"{'k' * 65}={pem}"):
        with pytest.raises(ConfigError):
            load_auth_key(spec)


def test_the_handshake_settings_name_the_bootstrap_keys_only_when_auth_is_on(tmp_path: Path, user_key: Signer, admin_key: Signer) -> None:
    from tests.node.helpers import cluster_configs

    off = cluster_configs(tmp_path, 1)[0]
    assert off.state_machine_settings() == {"kv": {"maxmemory_bytes": None, "eviction_policy": "lru"}}
    one = off.replace(auth_keys=(user_key.trusted, admin_key.trusted)).validate()
    same = off.replace(auth_keys=(admin_key.trusted, user_key.trusted)).validate()  # order does not matter
    assert one.auth_enabled and one.state_machine_settings() == same.state_machine_settings()
    assert one.state_machine_settings()["auth"]["leeway_ms"] == 30_000
    assert off.replace(auth_leeway_ms=1_000).state_machine_settings()["auth"]["leeway_ms"] == 1_000
    from trimaran.errors import ConfigError

    with pytest.raises(ConfigError, match="given twice"):
        off.replace(auth_keys=(user_key.trusted, user_key.trusted)).validate()
    with pytest.raises(ConfigError, match="auth_leeway_ms"):
        off.replace(auth_leeway_ms=-1).validate()


def test_refusal_lines_are_bounded_and_say_how_many_were_left_out(caplog: pytest.LogCaptureFixture) -> None:
    """A hostile client must not be able to flood the log with refusals (review finding)."""
    from trimaran.node import authoriser

    refusals = authoriser._RefusalLog()
    with caplog.at_level("INFO", logger="trimaran.node.authoriser"):
        for i in range(authoriser.REFUSAL_LOG_LINES_MAX + 30):
            refusals.info("refused %d", i)
        assert len(caplog.records) == authoriser.REFUSAL_LOG_LINES_MAX
        refusals._window_start_s -= authoriser.REFUSAL_LOG_WINDOW_S  # the next window
        refusals.info("refused %d", 99)
    assert caplog.records[-1].getMessage() == "refused 99 (and 30 refusals not logged)"
