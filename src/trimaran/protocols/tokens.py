"""Signed tokens: PASETO v4.public (Ed25519), and the claims trimaran reads from them.

Sans-IO: the time is passed in (``now_ms``), nothing here reads a clock or a file. Signing and
verifying go through pyseto, a maintained PASETO implementation (the official v4 test vectors run
in ``tests/protocols/test_tokens.py``); keys are handled with ``cryptography``.

A token is ``v4.public.<payload>.<footer>``. The footer is JSON ``{"kid": KEY_ID}`` naming the
trusted public key that verifies it (a node may trust several at once: rotation). The payload is
JSON with these claims::

    sub     who (logged with every refusal)          jti     token id (what a revocation names)
    aud     the cluster id                           scopes  list of grants (trimaran.protocols.scopes)
    exp     expiry, RFC 3339, required               iat     issued at, RFC 3339 (optional)
    nbf     not before, RFC 3339 (optional)

Every refusal is one typed error, :class:`~trimaran.errors.Unauthenticated`, whose message says
why (malformed, wrong version or purpose, unknown or retired key, bad signature, expired, not yet
valid, wrong audience, bad claims) and never echoes key material or more than a few bytes of input.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

import pyseto
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from trimaran import limits
from trimaran.errors import InvalidArgument, Unauthenticated
from trimaran.protocols.scopes import Scope, parse_scopes

HEADER = "v4.public."
ED25519_PUBLIC_KEY_BYTES = 32
_CLAIMS_STR_MAX = 256  # sub, jti, aud


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key the cluster accepts tokens from. ``not_after_ms``: retired from then on (0: never)."""

    kid: str
    public_key: bytes
    not_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says; ``scopes`` are parsed grants, ``scope_texts`` as written."""

    sub: str
    jti: str
    aud: str
    kid: str
    exp_ms: int
    iat_ms: int
    nbf_ms: int
    scopes: tuple[Scope, ...]
    scope_texts: tuple[str, ...]


# ------------------------------------------------------------------------------------------- keys


def new_private_key() -> bytes:
    """A new Ed25519 private key, PKCS#8 PEM (the caller writes it with mode 0600)."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def private_key_from_bytes(raw: bytes) -> bytes:
    """The Ed25519 private key (PKCS#8 PEM) whose 32 secret bytes are ``raw``: a key derived from
    other secret material (the simulator derives its keys from its seed, never from entropy)."""
    if len(raw) != 32:
        raise InvalidArgument("an Ed25519 private key is 32 bytes")
    key = Ed25519PrivateKey.from_private_bytes(raw)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidArgument("not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument("the signing key must be Ed25519 (PASETO v4.public)")
    return key


def public_key_of(private_pem: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key of a PEM private key."""
    return load_private_key(private_pem).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_text(text: bytes) -> bytes:
    """A public key given as PEM (SubjectPublicKeyInfo) or as 32 raw bytes: the raw 32 bytes."""
    if len(text) == ED25519_PUBLIC_KEY_BYTES:
        return text
    try:
        key = serialization.load_pem_public_key(text)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidArgument("not a PEM public key nor 32 raw bytes") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidArgument("a trusted key must be Ed25519 (PASETO v4.public)")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(public_key: bytes) -> bytes:
    return Ed25519PublicKey.from_public_bytes(public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public_key: bytes) -> str:
    """A short stable id for a public key (the default ``kid``): 20 lowercase base32 characters of
    its SHA-256. Not base64url, whose ``-`` could begin an id that a shell command then takes for
    an option (``trimaran auth retire -x...``)."""
    return base64.b32encode(hashlib.sha256(public_key).digest()[:12]).decode().rstrip("=").lower()


# ------------------------------------------------------------------------------------------- sign


def sign(
    private_pem: bytes,
    *,
    kid: str,
    sub: str,
    scopes: list[str],
    audience: str,
    now_ms: int,
    ttl_ms: int,
    jti: str,
) -> str:
    """A v4.public token for ``sub`` with ``scopes``, valid from ``now_ms`` for ``ttl_ms``."""
    if not 0 < ttl_ms <= limits.token_ttl_ms_max:
        raise InvalidArgument(f"ttl_ms must be in 1..{limits.token_ttl_ms_max}")
    parse_scopes(scopes)  # refuse to sign what no node would accept
    for name, value in (("kid", kid), ("sub", sub), ("jti", jti), ("audience", audience)):
        if not value or len(value) > _CLAIMS_STR_MAX:
            raise InvalidArgument(f"{name} must be 1..{_CLAIMS_STR_MAX} characters")
    claims = {
        "sub": sub,
        "jti": jti,
        "aud": audience,
        "iat": format_rfc3339_ms(now_ms),
        "nbf": format_rfc3339_ms(now_ms),
        "exp": format_rfc3339_ms(now_ms + ttl_ms),
        "scopes": list(scopes),
    }
    key = pyseto.Key.new(4, "public", load_private_key(private_pem).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    footer = json.dumps({"kid": kid}, separators=(",", ":")).encode()
    token = pyseto.encode(key, payload, footer=footer).decode()
    if len(token) > limits.token_bytes_max:
        raise InvalidArgument(f"the token would be over token_bytes_max ({limits.token_bytes_max} bytes)")
    return token


# ------------------------------------------------------------------------------------------- verify


def verify_signature(token: str | bytes, public_key: bytes, implicit_assertion: bytes = b"") -> tuple[bytes, bytes]:
    """Check a v4.public token's signature with one key: (payload, footer) bytes, or Unauthenticated.

    The cryptographic layer alone (what the official test vectors exercise); :func:`verify` adds
    the key lookup and the claims."""
    raw = _header_checked(token)
    try:
        key = pyseto.Key.new(4, "public", public_key_pem(public_key))
        decoded = pyseto.decode(key, raw, implicit_assertion=implicit_assertion)
    except (pyseto.PysetoError, ValueError, TypeError):
        raise Unauthenticated("token signature does not verify") from None
    payload, footer = decoded.payload, decoded.footer
    assert isinstance(payload, bytes) and isinstance(footer, bytes)
    return payload, footer


def footer_kid(token: str | bytes) -> str:
    """The ``kid`` of a token's footer, read before any key is chosen (the footer is not secret)."""
    raw = _header_checked(token)
    parts = raw.split(b".")
    if len(parts) != 4:
        raise Unauthenticated("token has no footer naming its key (kid)")
    try:
        footer = json.loads(base64.urlsafe_b64decode(parts[3] + b"=" * (-len(parts[3]) % 4)))
    except (ValueError, binascii.Error, RecursionError):  # RecursionError: '[[[[...' nested deep
        raise Unauthenticated("token footer is not JSON") from None
    kid = footer.get("kid") if isinstance(footer, dict) else None
    if not isinstance(kid, str) or not 0 < len(kid) <= limits.kid_chars_max:
        raise Unauthenticated("token footer names no key id (kid)")
    return kid


def unverified_claims(token: str | bytes) -> dict[str, Any]:
    """A token's claims read WITHOUT checking its signature (a v4.public payload is signed, not
    encrypted): for showing a user what their token says (``trimaran auth whoami``), never for
    deciding anything."""
    raw = _header_checked(token)
    body = raw[len(HEADER) :].split(b".")[0]
    try:
        signed = base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
        claims = json.loads(signed[:-64])  # the Ed25519 signature is the last 64 bytes
    except (ValueError, binascii.Error, RecursionError):
        raise Unauthenticated("token payload is not JSON") from None
    if not isinstance(claims, dict):
        raise Unauthenticated("token payload is not a JSON object")
    return claims


def verify(
    token: str | bytes,
    keys: Mapping[str, TrustedKey],
    *,
    audience: str,
    now_ms: int,
    leeway_ms: int = limits.token_leeway_ms_default,
    ttl_ms_max: int = limits.token_ttl_ms_max,
) -> Claims:
    """Verify a token against the trusted ``keys`` (by kid) at ``now_ms``; Unauthenticated if not."""
    kid = footer_kid(token)
    trusted = keys.get(kid)
    if trusted is None:
        raise Unauthenticated(f"unknown key id {kid[:32]!r}")
    if trusted.not_after_ms and now_ms >= trusted.not_after_ms:
        raise Unauthenticated(f"key {kid[:32]!r} is retired")
    payload, _ = verify_signature(token, trusted.public_key)
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        raise Unauthenticated("token payload is not JSON") from None
    if not isinstance(claims, dict):
        raise Unauthenticated("token payload is not a JSON object")
    sub, jti, aud = (_claim_str(claims, name) for name in ("sub", "jti", "aud"))
    if aud != audience:
        raise Unauthenticated("token is for another cluster (aud)")
    if "exp" not in claims:
        raise Unauthenticated("token has no expiry (exp)")
    exp_ms = _claim_time(claims, "exp")
    iat_ms = _claim_time(claims, "iat") if "iat" in claims else 0
    nbf_ms = _claim_time(claims, "nbf") if "nbf" in claims else 0
    if now_ms > exp_ms + leeway_ms:
        raise Unauthenticated("token expired", reason="expired")  # the client may refresh it
    if nbf_ms and now_ms + leeway_ms < nbf_ms:
        raise Unauthenticated("token not yet valid (nbf)")
    if iat_ms and iat_ms > now_ms + leeway_ms:
        raise Unauthenticated("token issued in the future (iat)")
    # The lifetime counts from the earlier of iat and now: a token cannot stretch it with a late
    # iat, so no valid token outlives token_ttl_ms_max from the moment a node first accepts it.
    if exp_ms - min(iat_ms or now_ms, now_ms) > ttl_ms_max:
        raise Unauthenticated("token lifetime over token_ttl_ms_max")
    texts = claims.get("scopes")
    try:
        scopes = parse_scopes(texts)
    except InvalidArgument as exc:
        raise Unauthenticated(f"token scopes: {exc.message}") from None
    assert isinstance(texts, list)
    return Claims(sub, jti, aud, kid, exp_ms, iat_ms, nbf_ms, scopes, tuple(texts))


#: A PASETO header (version, purpose) that is not ``v4.public``: what a refusal may show of a token.
_OTHER_PASETO_HEADER = re.compile(rb"v[1-4]\.(?:local|public)")


def _header_checked(token: str | bytes) -> bytes:
    raw = token.encode() if isinstance(token, str) else token
    if not raw:
        raise Unauthenticated("no token")
    if len(raw) > limits.token_bytes_max:
        raise Unauthenticated(f"token over token_bytes_max ({limits.token_bytes_max} bytes)")
    if not raw.isascii():
        raise Unauthenticated("token is not ASCII")
    if not raw.startswith(HEADER.encode()):
        # A PASETO token of another version or purpose is named by its header; of anything else
        # nothing is echoed (into the answer or the node's log): it may be a password meant for
        # another system, sent here by mistake.
        header = b".".join(raw.split(b".", 2)[:2])
        if raw.count(b".") >= 2 and _OTHER_PASETO_HEADER.fullmatch(header):
            raise Unauthenticated(f"not a v4.public token ({header.decode()}); only v4.public is accepted")
        raise Unauthenticated("not a PASETO token; only v4.public tokens are accepted")
    return raw


def _claim_str(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= _CLAIMS_STR_MAX:
        raise Unauthenticated(f"token claim {name} missing or not a string of 1..{_CLAIMS_STR_MAX}")
    return value


def _claim_time(claims: dict[str, Any], name: str) -> int:
    value = claims.get(name)
    ms = parse_rfc3339_ms(value) if isinstance(value, str) else None
    if ms is None:
        raise Unauthenticated(f"token claim {name} is not an RFC 3339 time with a zone offset")
    return ms


# RFC 3339 section 5.6 date-time; the zone offset is required. (Hand-parsed: this layer may not
# import datetime, which can read the clock; see tests/test_architecture.py.)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_rfc3339_ms(text: str) -> int | None:
    """Milliseconds since the Unix epoch of an RFC 3339 date-time, or None if it is not one."""
    m = _RFC3339.fullmatch(text) if len(text) <= 64 else None
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= year and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1] and hour < 24 and minute < 60 and second < 61):
        return None
    frac_ms = int((m.group(7) or "0").ljust(3, "0")[:3])
    offset_s = 0
    if m.group(9):
        offset_h, offset_m = int(m.group(10)), int(m.group(11))
        if offset_h > 23 or offset_m > 59:
            return None
        offset_s = (offset_h * 3600 + offset_m * 60) * (1 if m.group(9) == "+" else -1)
    seconds = calendar.timegm((year, month, day, hour, minute, min(second, 59), 0, 0, 0)) - offset_s
    return seconds * 1000 + frac_ms


def format_rfc3339_ms(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` for milliseconds since the Unix epoch (UTC)."""
    days, ms_of_day = divmod(ms, 86_400_000)
    year, month, day = _civil_from_days(days)
    seconds, milli = divmod(ms_of_day, 1000)
    return f"{year:04d}-{month:02d}-{day:02d}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{milli:03d}Z"


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01, proleptic Gregorian (400-year eras)."""
    days += 719_468  # days from 0000-03-01 to 1970-01-01: eras start in March, after leap days
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153  # 0 = March
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    return year_of_era + era * 400 + (1 if month <= 2 else 0), month, day
