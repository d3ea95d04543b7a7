"""TLS for both ports: a cluster CA and per-node certificates (``trimaran certs init``), and the
SSL contexts a node serves and dials with (``trimaran node run --tls-dir DIR``).

A TLS directory holds::

    ca.pem              the cluster CA's certificate (clients verify nodes with it: --ca-file)
    ca-key.pem          the CA's private key (mode 0600): only ``certs issue`` needs it; keep it
                        off the nodes if you can
    node-<id>.pem       node <id>'s certificate, signed by the CA, for the client and peer ports
    node-<id>-key.pem   its private key (mode 0600)

Why a node certificate names its node id (``CN=node-<id>``, and a ``trimaran.node.<id>`` DNS name):
the peer port is mutual TLS, so each side proves it holds a certificate of this cluster's CA, and the
acceptor then checks that the certificate is the one of the node the ``peer_hello`` claims to be
(:func:`peer_node_id`). One node's key cannot speak for another, and a process without a certificate
of the CA cannot speak Raft at all (its handshake fails before any frame is read).

Peers check each other by CA and node id, not by host name, so a cluster's peer addresses may be IPs,
names, or change; clients check the host name they dial against the certificate's names (``--host``
at ``certs init``: loopback names by default), as any TLS client does.

Keys are ECDSA P-256 (every TLS stack supports them; Ed25519 certificates still are not universal).
TLS 1.2 is the oldest version offered; both ports negotiate 1.3 between trimaran processes.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trimaran.errors import ConfigError

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
#: Names every node certificate carries unless ``--host`` says otherwise: clients on this machine.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Validity of what ``certs init`` makes (the CA outlives the node certificates it signs).
CA_VALID_DAYS = 3650
NODE_VALID_DAYS_DEFAULT = 825
NODE_VALID_DAYS_MAX = CA_VALID_DAYS
#: Node ids a TLS directory may hold certificates for (one cluster's worth, and then some).
NODE_ID_MAX = 1_000_000
#: Backdating of notBefore, so a node whose clock lags a little accepts a fresh certificate.
BACKDATE = datetime.timedelta(minutes=5)

assert NODE_VALID_DAYS_DEFAULT <= NODE_VALID_DAYS_MAX <= CA_VALID_DAYS


def node_cert_name(node_id: int) -> str:
    return f"node-{node_id}.pem"


def node_key_name(node_id: int) -> str:
    return f"node-{node_id}-key.pem"


def node_common_name(node_id: int) -> str:
    return f"node-{node_id}"


# ---------------------------------------------------------------------------- making certificates


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never briefly world-readable); refuse to
    overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(hosts: Iterable[str], node_id: int) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName(f"trimaran.node.{node_id}")]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def check_hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    """The names a node certificate will carry; ConfigError for one that cannot be a DNS name or an IP."""
    out = []
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if len(host) > 253 or not all(0 < len(p) <= 63 and p.replace("-", "").replace("*", "").isalnum() for p in host.split(".")):
                raise ConfigError(f"{host!r} is neither an IP address nor a DNS name") from None
        out.append(host)
    if not out:
        raise ConfigError("a node certificate needs at least one host name or IP address")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class _Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _load_ca(tls_dir: Path) -> _Ca:
    try:
        cert = x509.load_pem_x509_certificate((tls_dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((tls_dir / CA_KEY).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the cluster CA in {tls_dir}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{tls_dir / CA_KEY} is not an EC private key")
    return _Ca(cert, key)


def _make_ca(tls_dir: Path, cluster_id: str, now: datetime.datetime) -> _Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"trimaran cluster CA ({cluster_id})")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(tls_dir / CA_KEY, _key_pem(key))
    _write_public(tls_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return _Ca(cert, key)


def _issue(tls_dir: Path, ca: _Ca, node_id: int, hosts: tuple[str, ...], valid_days: int, now: datetime.datetime) -> list[Path]:
    if not 0 < node_id <= NODE_ID_MAX:
        raise ConfigError(f"node id {node_id} is not in 1..{NODE_ID_MAX}")
    cert_path, key_path = tls_dir / node_cert_name(node_id), tls_dir / node_key_name(node_id)
    for path in (cert_path, key_path):
        if path.exists():
            raise ConfigError(f"{path} exists already: refusing to overwrite a node's certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_common_name(node_id))]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=valid_days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )  # digital_signature
        # Both: the node serves TLS on its ports and presents the same certificate when it dials a peer.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(_san(hosts, node_id), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return [cert_path, key_path]


def init_certs(
    tls_dir: str | Path,
    node_ids: Iterable[int],
    *,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    cluster_id: str = "trimaran",
    valid_days: int = NODE_VALID_DAYS_DEFAULT,
) -> list[Path]:
    """Make a cluster CA and a certificate for each node id in ``tls_dir``; the files written.
    Refuses (``ConfigError``) to overwrite a CA or a node's files."""
    root = Path(tls_dir)
    if (root / CA_CERT).exists() or (root / CA_KEY).exists():
        raise ConfigError(f"{root} already holds a cluster CA; use `trimaran certs issue` to add a node")
    ids = sorted(set(node_ids))
    if not ids:
        raise ConfigError("name at least one node id")
    hosts_ok = check_hosts(hosts)
    _check_days(valid_days)
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = _make_ca(root, cluster_id, now)
    written = [root / CA_CERT, root / CA_KEY]
    for node_id in ids:
        written += _issue(root, ca, node_id, hosts_ok, valid_days, now)
    return written


def issue_cert(
    tls_dir: str | Path, node_id: int, *, hosts: Iterable[str] = DEFAULT_HOSTS, valid_days: int = NODE_VALID_DAYS_DEFAULT
) -> list[Path]:
    """Sign a certificate for one more node with the CA in ``tls_dir``; the files written."""
    root = Path(tls_dir)
    hosts_ok = check_hosts(hosts)
    _check_days(valid_days)
    return _issue(root, _load_ca(root), node_id, hosts_ok, valid_days, datetime.datetime.now(datetime.timezone.utc))


def _check_days(valid_days: int) -> None:
    if not 0 < valid_days <= NODE_VALID_DAYS_MAX:
        raise ConfigError(f"valid days must be in 1..{NODE_VALID_DAYS_MAX}")


# ---------------------------------------------------------------------------- serving and dialing


@dataclass(frozen=True, slots=True)
class NodeTls:
    """The contexts a node with ``--tls-dir`` uses."""

    #: The client port: the node's certificate; clients are not asked for one (tokens say who they are).
    client_server: ssl.SSLContext
    #: The peer port: the node's certificate, and the dialer must present one of the cluster CA.
    peer_server: ssl.SSLContext
    #: Dialing a peer: present the node's certificate, require one of the cluster CA.
    peer_client: ssl.SSLContext


def _base(purpose: ssl.Purpose, tls_dir: Path, node_id: int) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls_dir / node_cert_name(node_id), tls_dir / node_key_name(node_id))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load node {node_id}'s certificate from {tls_dir} ({exc}); make one with "
            f"`trimaran certs init {tls_dir}` or `trimaran certs issue {tls_dir} --node {node_id}`"
        ) from None
    return ctx


def node_tls(tls_dir: str | Path, node_id: int) -> NodeTls:
    """Load node ``node_id``'s contexts from ``tls_dir``; ``ConfigError`` names what is missing."""
    root = Path(tls_dir)
    ca = root / CA_CERT
    if not ca.is_file():
        raise ConfigError(f"no cluster CA certificate at {ca}; make one with `trimaran certs init {root}`")
    client_server = _base(ssl.Purpose.CLIENT_AUTH, root, node_id)
    peer_server = _base(ssl.Purpose.CLIENT_AUTH, root, node_id)
    peer_server.verify_mode = ssl.CERT_REQUIRED
    peer_client = _base(ssl.Purpose.SERVER_AUTH, root, node_id)
    # Peers are checked by CA and node id (peer_node_id), not by the name they were dialed by.
    peer_client.check_hostname = False
    peer_client.verify_mode = ssl.CERT_REQUIRED
    for ctx in (peer_server, peer_client):
        # Only this cluster's CA, not the system's: a certificate from a public CA is no peer.
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the cluster CA certificate {ca}: {exc}") from None
    return NodeTls(client_server, peer_server, peer_client)


def peer_node_id(peer_cert: dict[str, Any] | None) -> int | None:
    """The node id a verified peer certificate (``SSLStream.getpeercert()``) was issued for, or None."""
    if not peer_cert:
        return None
    for rdn in peer_cert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName" and isinstance(value, str) and value.startswith("node-"):
                digits = value[len("node-") :]
                if digits.isdigit() and len(digits) <= 7:
                    return int(digits)
    return None


def client_context(ca_file: str | Path) -> ssl.SSLContext:
    """A context that verifies nodes against the cluster CA in ``ca_file`` (``trimaran up``'s own
    probes; the client library builds its own, as it may not import node/)."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
