"""``trimaran auth keygen|token|trust|retire|revoke|keys|whoami``: tokens and the auth service."""

from __future__ import annotations

from typing import Any

import click

from trimaran.cli import ClientArgs, _client_options, _none_found, _service, main


@main.group("auth")
def auth_group() -> None:
    """Signing keys, tokens, trusted keys and revocations (PASETO v4.public, Ed25519).

    Offline: keygen, token, whoami. Through the cluster (admin:* once a node enforces tokens):
    trust, retire, revoke, keys.
    """


_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def _duration_ms(text: str) -> int:
    """``90s``, ``15m``, ``1h``, ``30d`` or plain milliseconds."""
    import re

    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", text.strip())
    if m is None:
        raise click.BadParameter(f"{text!r} is not a duration such as 90s, 15m, 1h, 30d")
    return int(m.group(1)) * _DURATION_UNITS_MS[m.group(2) or "ms"]


@auth_group.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False))
def auth_keygen_command(path: str) -> None:
    """Write a new Ed25519 signing key to PATH (mode 0600) and its public key to PATH.pub.

    Prints the public key's id (kid). Give PATH.pub to the nodes (trusted keys); keep PATH secret.
    Refuses to overwrite either file.
    """
    import os

    from trimaran.protocols import tokens

    private = tokens.new_private_key()
    public = tokens.public_key_of(private)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        with open(path + ".pub", "xb") as f:
            f.write(tokens.public_key_pem(public))
    except FileExistsError as exc:
        raise click.UsageError(f"{exc.filename} exists; not overwriting a key") from None
    click.echo(tokens.key_id(public))


@auth_group.command("token")
@click.option("--key", "key_path", required=True, type=click.File("rb"), help="Signing key (PEM) from `auth keygen`.")
@click.option("--sub", required=True, help="Who the token is for (logged with every refusal).")
@click.option("--scope", "scopes", multiple=True, required=True, help="A grant such as kv:read:user:* (repeat).")
@click.option("--ttl", default="1h", show_default=True, help="Lifetime: 90s, 15m, 1h, 30d or milliseconds.")
@click.option("--cluster-id", envvar="TRIMARAN_CLUSTER_ID", default="trimaran", show_default=True, help="Audience (aud).")
@click.option("--kid", help="Key id in the footer (default: the public key's id, as `auth keygen` printed).")
@click.option("--jti", help="Token id, for revocation (default: random).")
def auth_token_command(
    key_path: Any, sub: str, scopes: tuple[str, ...], ttl: str, cluster_id: str, kid: str | None, jti: str | None
) -> None:
    """Print a signed token (offline: signing needs only the key)."""
    import secrets
    import time

    from trimaran.errors import TrimaranError
    from trimaran.protocols import tokens

    private = key_path.read()
    try:
        token = tokens.sign(
            private,
            kid=kid or tokens.key_id(tokens.public_key_of(private)),
            sub=sub,
            scopes=list(scopes),
            audience=cluster_id,
            now_ms=int(time.time() * 1000),
            ttl_ms=_duration_ms(ttl),
            jti=jti or secrets.token_urlsafe(12),
        )
    except TrimaranError as exc:
        raise click.UsageError(exc.message) from None
    click.echo(token)


@auth_group.command("whoami")
@click.option("--token", envvar="TRIMARAN_TOKEN", required=True, help="The token [env TRIMARAN_TOKEN].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def auth_whoami_command(token: str, as_json: bool) -> None:
    """Show what a token says (its claims and key id), read locally WITHOUT checking the signature:
    only a node that trusts the key can say whether it is valid."""
    import json

    from trimaran.errors import TrimaranError
    from trimaran.protocols import tokens

    try:
        claims = tokens.unverified_claims(token)
        kid: str | None = tokens.footer_kid(token)
    except TrimaranError as exc:
        raise click.ClickException(exc.message) from None
    shown = {"kid": kid, **claims}
    if as_json:
        click.echo(json.dumps(shown, indent=2, sort_keys=True))
        return
    for name in ("sub", "scopes", "aud", "exp", "iat", "nbf", "jti", "kid"):
        value = shown.get(name)
        click.echo(f"{name:7} {' '.join(value) if isinstance(value, list) else value}")


def _auth(client: ClientArgs, method: str, *args: Any, **options: Any) -> Any:
    return _service("auth", client, method, *args, **options)


@auth_group.command("trust")
@click.argument("public_key", type=click.File("rb"))
@click.option("--kid", help="Key id tokens will name (default: the key's id, as `auth keygen` printed).")
@_client_options(default_timeout_ms=5_000)
def auth_trust_command(
    public_key: Any, kid: str | None, client: ClientArgs, as_json: bool
) -> None:
    """Trust PUBLIC_KEY (a .pub file from `auth keygen`) on every node, through the log."""
    import json

    from trimaran.errors import TrimaranError
    from trimaran.protocols import tokens

    try:
        raw = tokens.public_key_from_text(public_key.read())
    except TrimaranError as exc:
        raise click.UsageError(exc.message) from None
    kid = kid or tokens.key_id(raw)
    added = _auth(client, "trust", kid, raw)
    click.echo(json.dumps({"kid": kid, "added": added}) if as_json else (f"trusted {kid}" if added else f"{kid} was already trusted"))


@auth_group.command("retire")
@click.argument("kid")
@_client_options(default_timeout_ms=5_000)
def auth_retire_command(kid: str, client: ClientArgs, as_json: bool) -> None:
    """Stop trusting KID from now: its tokens are refused and connections resting on them closed."""
    import json

    retired = _auth(client, "retire", kid)
    click.echo(json.dumps({"kid": kid, "retired": retired}) if as_json else ("retired" if retired else f"{kid} was not trusted"))


@auth_group.command("revoke")
@click.argument("jti_or_token")
@_client_options(default_timeout_ms=5_000)
def auth_revoke_command(
    jti_or_token: str, client: ClientArgs, as_json: bool
) -> None:
    """Revoke a token by its id (jti), or give the whole token (its jti and exp are read from it, so
    the cluster forgets the revocation once the token would have expired anyway)."""
    import json

    from trimaran.errors import TrimaranError
    from trimaran.protocols import tokens

    jti, exp_ms = jti_or_token, 0
    if jti_or_token.startswith(tokens.HEADER):
        try:
            claims = tokens.unverified_claims(jti_or_token)
        except TrimaranError as exc:
            raise click.UsageError(exc.message) from None
        jti = str(claims.get("jti", ""))
        exp_ms = tokens.parse_rfc3339_ms(str(claims.get("exp", ""))) or 0
    revoked = _auth(client, "revoke", jti, exp_ms=exp_ms)
    click.echo(json.dumps({"jti": jti, "revoked": revoked}) if as_json else ("revoked" if revoked else f"{jti} was already revoked"))


@auth_group.command("keys")
@_client_options(default_timeout_ms=5_000)
def auth_keys_command(client: ClientArgs, as_json: bool) -> None:
    """The keys the cluster trusts (and recently retired): kid, source, end."""
    import json

    from trimaran.protocols import tokens

    keys = _auth(client, "keys")
    rows = [
        {
            "kid": k.kid,
            "source": k.source,
            "not_after": tokens.format_rfc3339_ms(k.not_after_ms) if k.not_after_ms else None,
            "public_key": k.public_key.hex(),
        }
        for k in keys
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['kid']}\t{row['source']}\t{row['not_after'] or '-'}")
    if not rows:
        _none_found("no keys trusted", as_json)


# Command groups kept in modules of their own; they register on `main` as they are imported.
