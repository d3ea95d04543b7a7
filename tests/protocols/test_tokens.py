"""Tokens: the official PASETO v4 vectors, then a hostile-token suite where every case is refused
with ``Unauthenticated`` and a message that says why (and leaks no key material)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import assume, given, settings
from hypothesis import strategies as st
import pyseto

from trimaran import limits
from trimaran.errors import InvalidArgument, Unauthenticated
from trimaran.protocols import tokens
from trimaran.protocols.tokens import TrustedKey

VECTORS = json.loads((Path(__file__).parent / "paseto_v4_vectors.json").read_text())["tests"]
NOW_MS = 1_800_000_000_000
CLUSTER = "prod-eu"


@pytest.mark.parametrize("vector", [v for v in VECTORS if not v["expect-fail"]], ids=lambda v: v["name"])
def test_official_v4_public_vectors_verify(vector: dict) -> None:
    public = bytes.fromhex(vector["public-key"])
    payload, footer = tokens.verify_signature(vector["token"], public, vector["implicit-assertion"].encode())
    assert payload == vector["payload"].encode() and footer == vector["footer"].encode()
    # The secret key's public half is the vector's public key (the key handling agrees with it).
    assert bytes.fromhex(vector["secret-key"])[32:] == public


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["expect-fail"]], ids=lambda v: v["name"])
def test_official_must_fail_vectors_are_refused(vector: dict) -> None:
    key = bytes.fromhex(vector.get("public-key") or vector["key"])
    with pytest.raises(Unauthenticated):
        tokens.verify_signature(vector["token"], key, vector["implicit-assertion"].encode())


# ----------------------------------------------------------------------------- our tokens


@pytest.fixture(scope="module")
def signer() -> tuple[bytes, bytes, str]:
    private = tokens.new_private_key()
    public = tokens.public_key_of(private)
    return private, public, tokens.key_id(public)


def make(signer: tuple[bytes, bytes, str], **changes: object) -> str:
    private, _, kid = signer
    args: dict = dict(kid=kid, sub="alice", scopes=["kv:read:user:*"], audience=CLUSTER, now_ms=NOW_MS, ttl_ms=3_600_000, jti="t-1")
    args.update(changes)
    return tokens.sign(private, **args)


def keys_of(signer: tuple[bytes, bytes, str], not_after_ms: int = 0) -> dict[str, TrustedKey]:
    _, public, kid = signer
    return {kid: TrustedKey(kid, public, not_after_ms)}


def test_a_signed_token_verifies_with_its_claims(signer: tuple[bytes, bytes, str]) -> None:
    claims = tokens.verify(make(signer), keys_of(signer), audience=CLUSTER, now_ms=NOW_MS + 1000)
    assert (claims.sub, claims.jti, claims.aud, claims.kid) == ("alice", "t-1", CLUSTER, signer[2])
    assert (claims.iat_ms, claims.nbf_ms, claims.exp_ms) == (NOW_MS, NOW_MS, NOW_MS + 3_600_000)
    assert claims.scope_texts == ("kv:read:user:*",) and claims.scopes[0].allows("kv", "read", b"user:7")


def test_a_key_derived_from_bytes_is_the_same_key_every_time_and_signs_deterministically() -> None:
    pem = tokens.private_key_from_bytes(b"\x07" * 32)
    assert pem == tokens.private_key_from_bytes(b"\x07" * 32) != tokens.private_key_from_bytes(b"\x08" * 32)
    public = tokens.public_key_of(pem)
    signer = (pem, public, tokens.key_id(public))
    assert make(signer) == make(signer)  # Ed25519: the same key and claims, the same token
    assert tokens.verify(make(signer), keys_of(signer), audience=CLUSTER, now_ms=NOW_MS).sub == "alice"
    with pytest.raises(InvalidArgument, match="32 bytes"):
        tokens.private_key_from_bytes(b"short")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _parts(token: str) -> list[bytes]:
    return token.encode().split(b".")


def _retag_footer(token: str, footer: bytes) -> str:
    parts = _parts(token)
    return b".".join(parts[:3] + [_b64(footer)]).decode()


def _hostile_cases(signer: tuple[bytes, bytes, str]) -> list[tuple[str, str, str]]:
    other = (tokens.new_private_key(), b"", "")
    other = (other[0], tokens.public_key_of(other[0]), signer[2])  # another key, claiming our kid
    good = make(signer)
    parts = _parts(good)
    body = base64.urlsafe_b64decode(parts[2] + b"=" * (-len(parts[2]) % 4))
    tampered_body = bytes([body[0] ^ 1]) + body[1:]
    return [
        ("tampered payload", b".".join(parts[:2] + [_b64(tampered_body), parts[3]]).decode(), "signature"),
        ("tampered footer", _retag_footer(good, json.dumps({"kid": signer[2], "x": 1}).encode()), "signature"),
        ("swapped kid", make(other), "signature"),
        ("unknown kid", _retag_footer(good, b'{"kid":"nobody"}'), "unknown key id"),
        ("footer not json", _retag_footer(good, b"not json"), "footer is not JSON"),
        ("footer nested deep", _retag_footer(good, b"[" * 5000), "footer is not JSON"),
        ("no footer", b".".join(parts[:3]).decode(), "no footer"),
        ("v4.local header", "v4.local." + good[len("v4.public."):], "only v4.public"),
        ("v3.public header", "v3.public." + good[len("v4.public."):], "only v4.public"),
        ("wrong audience", make(signer, audience="another-cluster"), "another cluster"),
        ("expired", make(signer, now_ms=NOW_MS - 7_200_000), "expired"),
        ("not yet valid", make(signer, now_ms=NOW_MS + 600_000), "not yet valid"),
        ("oversized", "v4.public." + "A" * limits.token_bytes_max, "token_bytes_max"),
        ("not ascii", "v4.public.\u00e9t\u00e9", "not ASCII"),
        ("empty", "", "no token"),
    ]


def test_hostile_tokens_are_refused_with_a_reason(signer: tuple[bytes, bytes, str]) -> None:
    for name, token, reason in _hostile_cases(signer):
        with pytest.raises(Unauthenticated) as info:
            tokens.verify(token, keys_of(signer), audience=CLUSTER, now_ms=NOW_MS)
        assert reason in info.value.message, (name, info.value.message)
        assert signer[1].hex() not in info.value.message and "PRIVATE" not in info.value.message


_PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)


@settings(max_examples=300)
@given(st.one_of(_PRINTABLE, st.builds(lambda v, p, rest: f"v{v}.{p}.{rest}", st.integers(0, 12), st.sampled_from(["local", "public", "secret", "pub"]), _PRINTABLE)))
def test_nothing_of_a_credential_that_is_no_paseto_token_is_echoed(secret: str) -> None:
    """A password sent as a token (an app's Redis password, another system's bearer token) is
    refused without any of it in the message, which the node also logs; a PASETO token of another
    version or purpose is named by its header alone."""
    assume(not secret.startswith("v4.public."))
    with pytest.raises(Unauthenticated) as info:
        tokens.verify(secret, {}, audience=CLUSTER, now_ms=NOW_MS)
    version, _, rest = secret.partition(".")
    purpose, dot, _ = rest.partition(".")
    if dot and version in ("v1", "v2", "v3", "v4") and purpose in ("local", "public"):
        assert info.value.message == f"not a v4.public token ({version}.{purpose}); only v4.public is accepted"
    else:
        assert info.value.message == "not a PASETO token; only v4.public tokens are accepted"


def test_a_password_given_as_a_token_is_not_echoed() -> None:
    with pytest.raises(Unauthenticated) as info:
        tokens.verify("mysecretpassword123456789", {}, audience=CLUSTER, now_ms=NOW_MS)
    assert "mysecret" not in info.value.message and "only v4.public" in info.value.message
    with pytest.raises(Unauthenticated, match=r"\(v2\.local\)"):
        tokens.verify("v2.local.c2VjcmV0LXN0dWZm", {}, audience=CLUSTER, now_ms=NOW_MS)


def test_a_retired_key_refuses_from_its_not_after(signer: tuple[bytes, bytes, str]) -> None:
    token = make(signer)
    tokens.verify(token, keys_of(signer, not_after_ms=NOW_MS + 1), audience=CLUSTER, now_ms=NOW_MS)
    with pytest.raises(Unauthenticated, match="retired"):
        tokens.verify(token, keys_of(signer, not_after_ms=NOW_MS), audience=CLUSTER, now_ms=NOW_MS)


def _signed_claims(signer: tuple[bytes, bytes, str], claims: dict) -> str:
    """A token with arbitrary claims, validly signed (to test claim checks, not signatures)."""
    key = pyseto.Key.new(4, "public", signer[0])
    footer = json.dumps({"kid": signer[2]}).encode()
    return pyseto.encode(key, json.dumps(claims).encode(), footer=footer).decode()


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "a", "jti": "j", "aud": CLUSTER, "scopes": []}, "no expiry"),
        ({"sub": "a", "jti": "j", "aud": CLUSTER, "scopes": [], "exp": "tomorrow"}, "RFC 3339"),
        ({"sub": "a", "jti": "j", "aud": CLUSTER, "scopes": [], "exp": "2027-02-01T00:00:00"}, "RFC 3339"),
        ({"jti": "j", "aud": CLUSTER, "scopes": [], "exp": "2027-02-01T00:00:00Z"}, "sub"),
        ({"sub": "a", "jti": "j", "aud": CLUSTER, "scopes": "kv:*", "exp": "2027-02-01T00:00:00Z"}, "scopes"),
        ({"sub": "a", "jti": "j", "aud": CLUSTER, "scopes": ["kv:fly:*"], "exp": "2027-02-01T00:00:00Z"}, "unknown action"),
        ({"sub": "a", "jti": "j", "aud": CLUSTER, "scopes": [], "exp": "2099-01-01T00:00:00Z"}, "token_ttl_ms_max"),
        # Review finding: a late iat must not stretch the lifetime past token_ttl_ms_max.
        (
            {"sub": "a", "jti": "j", "aud": CLUSTER, "scopes": [], "exp": "2099-01-01T00:00:00Z", "iat": "2098-12-31T23:59:59Z"},
            "issued in the future",
        ),
        ({"sub": "a", "jti": "j", "aud": CLUSTER, "scopes": [], "exp": "0000-01-01T00:00:00Z"}, "RFC 3339"),
    ],
)
def test_bad_claims_are_refused(signer: tuple[bytes, bytes, str], claims: dict, reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        tokens.verify(_signed_claims(signer, claims), keys_of(signer), audience=CLUSTER, now_ms=NOW_MS)


def test_leeway_tolerates_small_skew_only(signer: tuple[bytes, bytes, str]) -> None:
    token = make(signer, ttl_ms=60_000)
    exp = NOW_MS + 60_000
    tokens.verify(token, keys_of(signer), audience=CLUSTER, now_ms=exp + 29_000, leeway_ms=30_000)
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.verify(token, keys_of(signer), audience=CLUSTER, now_ms=exp + 31_000, leeway_ms=30_000)


def test_signing_refuses_what_no_node_would_accept(signer: tuple[bytes, bytes, str]) -> None:
    with pytest.raises(InvalidArgument, match="ttl_ms"):
        make(signer, ttl_ms=limits.token_ttl_ms_max + 1)
    with pytest.raises(InvalidArgument, match="unknown service"):
        make(signer, scopes=["db:read:*"])
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(InvalidArgument, match="Ed25519"):  # a key of the wrong type
        tokens.public_key_from_text(p256.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(InvalidArgument, match="PEM"):
        tokens.public_key_from_text(b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")


def test_public_keys_load_from_pem_or_raw(signer: tuple[bytes, bytes, str]) -> None:
    _, public, _ = signer
    assert tokens.public_key_from_text(tokens.public_key_pem(public)) == public
    assert tokens.public_key_from_text(public) == public


@given(st.integers(min_value=-(10**13), max_value=253_402_300_799_999 - 3_600_000))  # years 1653..9999
def test_rfc3339_round_trips(ms: int) -> None:
    text = tokens.format_rfc3339_ms(ms)
    assert tokens.parse_rfc3339_ms(text) == ms
    # The same instant written with another zone offset parses to the same time.
    if ms >= 3_600_000:
        shifted = tokens.format_rfc3339_ms(ms + 3_600_000)[:-1] + "+01:00"
        assert tokens.parse_rfc3339_ms(shifted) == ms


@pytest.mark.parametrize("text", ["2022-02-30T00:00:00Z", "2022-01-01T24:00:00Z", "2022-01-01 00:00", "2022-01-01T00:00:00+25:00", ""])
def test_rfc3339_refuses_impossible_times(text: str) -> None:
    assert tokens.parse_rfc3339_ms(text) is None


def test_key_ids_never_look_like_an_option() -> None:
    """A kid is typed on command lines (`trimaran auth retire KID`): it must not begin with '-'."""
    for i in range(300):
        kid = tokens.key_id(bytes([i % 256, i // 256]) * 16)
        assert kid.isalnum() and kid == kid.lower() and len(kid) == 20
