"""`trimaran auth ...`: offline key and token commands, and the auth service through a (fake) cluster."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.client.fake_server import FakeCluster, cluster_in_thread
from trimaran.cli import main
from trimaran.protocols import tokens
from trimaran.protocols.tokens import TrustedKey


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with cluster_in_thread(leader_id=1) as c:
        yield c


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_keygen_token_whoami_and_the_token_verifies(tmp_path: Path) -> None:
    key = tmp_path / "admin.key"
    code, out, _ = run("auth", "keygen", str(key))
    kid = out.strip()
    assert code == 0 and stat.S_IMODE(os.stat(key).st_mode) == 0o600
    public = tokens.public_key_from_text((tmp_path / "admin.key.pub").read_bytes())
    assert kid == tokens.key_id(public)
    assert run("auth", "keygen", str(key))[0] == 2  # never overwrites a key
    code, out, _ = run(
        "auth", "token", "--key", str(key), "--sub", "ops", "--scope", "kv:read:*", "--scope", "admin:*",
        "--ttl", "15m", "--cluster-id", "prod", "--jti", "t-1",
    )  # fmt: skip
    token = out.strip()
    assert code == 0 and token.startswith("v4.public.")
    claims = tokens.verify(token, {kid: TrustedKey(kid, public)}, audience="prod", now_ms=tokens.parse_rfc3339_ms(
        tokens.unverified_claims(token)["iat"]) or 0)  # fmt: skip
    assert (claims.sub, claims.scope_texts, claims.exp_ms - claims.iat_ms) == ("ops", ("kv:read:*", "admin:*"), 900_000)
    code, out, _ = run("auth", "whoami", "--token", token, "--json")
    assert code == 0 and json.loads(out)["sub"] == "ops" and json.loads(out)["kid"] == kid
    code, out, _ = run("auth", "whoami", "--token", token)
    assert "scopes  kv:read:* admin:*" in out


def test_token_refuses_what_no_node_would_accept(tmp_path: Path) -> None:
    key = tmp_path / "k"
    run("auth", "keygen", str(key))
    code, _, err = run("auth", "token", "--key", str(key), "--sub", "x", "--scope", "db:*")
    assert code == 2 and "unknown service" in err
    code, _, err = run("auth", "token", "--key", str(key), "--sub", "x", "--scope", "kv:*", "--ttl", "soon")
    assert code == 2 and "duration" in err
    assert run("auth", "whoami", "--token", "v3.public.abc")[0] == 1


def test_trust_keys_revoke_retire_through_the_cluster(cluster: FakeCluster, tmp_path: Path) -> None:
    endpoints = ["--endpoints", ",".join(cluster.addresses())]
    key = tmp_path / "k"
    kid = run("auth", "keygen", str(key))[1].strip()
    assert run("auth", "trust", str(tmp_path / "k.pub"), *endpoints) == (0, f"trusted {kid}\n", "")
    assert run("auth", "trust", str(tmp_path / "k.pub"), *endpoints)[1] == f"{kid} was already trusted\n"
    code, out, _ = run("auth", "keys", "--json", *endpoints)
    assert code == 0 and [(k["kid"], k["source"], k["not_after"]) for k in json.loads(out)] == [(kid, "log", None)]
    token = run("auth", "token", "--key", str(key), "--sub", "u", "--scope", "kv:*", "--jti", "t-9")[1].strip()
    assert run("auth", "revoke", token, *endpoints)[1] == "revoked\n"  # jti and exp read from the token
    assert cluster.services["auth"].is_revoked("t-9")  # type: ignore[attr-defined]
    assert run("auth", "revoke", "t-9", *endpoints)[1] == "t-9 was already revoked\n"
    assert run("auth", "retire", kid, *endpoints) == (0, "retired\n", "")
    code, out, _ = run("auth", "keys", *endpoints)
    assert out == f"{kid}\tlog\t{tokens.format_rfc3339_ms(cluster.now_ms)}\n"  # retired at log time: its end shows
