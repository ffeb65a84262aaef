"""Sluice's local certificate authority: what lets the outbound door read HTTPS.

The instance trusts this CA (deploy/outbound.md), sends its HTTPS through Sluice as a
forward proxy, and Sluice answers each CONNECT with a certificate it mints for that
host. Only the instance should ever trust it: whoever holds the key can impersonate
any site to it, so the key lives under the data directory, mode 0600, and never
leaves this module.

Leaves follow mitmproxy's choices (facts/doors.md §3.1) where they matter to
clients: SAN carries the name (or IP address), EKU serverAuth, AKI = the CA's SKI
(strict chain builders compare them), no SKI on leaves, backdated not-before. They
differ where mitmproxy's reasons do not apply: one leaf key per process rather than
the CA's own (the CA key signs and nothing else), 30 days rather than 199 (Sluice
re-mints on its own), EC P-256 throughout (cheap to sign, understood by every TLS
stack the fediverse servers use).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import socket
import ssl
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.errors import SluiceError

__all__ = [
    "CA_CERT_FILE",
    "CA_DIR",
    "CA_KEY_FILE",
    "CaError",
    "CertificateAuthority",
    "Minted",
    "ca_paths",
    "create_ca",
]

CA_DIR = "ca"
CA_CERT_FILE = "sluice-ca.pem"
CA_KEY_FILE = "sluice-ca-key.pem"

_CA_YEARS = 10
_LEAF_DAYS = 30
_BACKDATE = datetime.timedelta(hours=1)
# A cached leaf with less than this left is minted afresh, so none expires in use.
_RENEW_BEFORE = datetime.timedelta(days=1)


class CaError(SluiceError):
    """The CA is missing, unreadable, or a host cannot be given a certificate."""


def ca_paths(data_dir: Path) -> tuple[Path, Path]:
    """Where the CA's certificate and key live under ``data_dir``."""
    directory = data_dir / CA_DIR
    return directory / CA_CERT_FILE, directory / CA_KEY_FILE


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` whole or not at all, created with ``mode`` (umask aside)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with open(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def create_ca(data_dir: Path, *, label: str | None = None, force: bool = False) -> bool:
    """Make the CA under ``data_dir``/ca unless one is there; True when one was made.

    ``force`` replaces an existing CA: every instance that trusts the old one must
    then be given the new certificate. ``label`` names the instance in the CA's
    subject (default: this machine's host name), so an admin who finds it in a trust
    store knows what it is.
    """
    cert_path, key_path = ca_paths(data_dir)
    if not force and (cert_path.exists() or key_path.exists()):
        if not (cert_path.exists() and key_path.exists()):
            missing = key_path if cert_path.exists() else cert_path
            raise CaError(f"{missing} is missing: the CA is incomplete (--force makes a new one)")
        return False
    try:
        cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CaError(f"cannot create {cert_path.parent}: {exc.strerror or exc}") from exc
    key = ec.generate_private_key(ec.SECP256R1())
    label = (label or socket.gethostname() or "this instance")[:40]
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sluice"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Sluice outbound CA for {label}"),
        ]
    )
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=365 * _CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # The key first: a certificate without its key is never left as a usable CA.
        _write_atomically(key_path, key_pem, 0o600)
        _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise CaError(f"cannot write the CA under {cert_path.parent}: {exc}") from exc
    return True


@dataclass(frozen=True)
class Minted:
    """A leaf certificate for one host and the TLS server context that presents it."""

    host: str
    certificate: x509.Certificate
    context: ssl.SSLContext

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc


def _san(host: str) -> x509.GeneralName:
    """The subjectAltName entry for ``host``; raises CaError for a name no cert can carry."""
    bare = host.strip().rstrip(".").lower()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        pass
    try:
        ascii_name = bare.encode("idna").decode("ascii")
    except UnicodeError:
        raise CaError(f"{host!r} is not a host name a certificate can name") from None
    labels = ascii_name.split(".")
    if (
        not ascii_name
        or len(ascii_name) > 253
        or not all(
            0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
            for label in labels
        )
    ):
        raise CaError(f"{host!r} is not a host name a certificate can name")
    return x509.DNSName(ascii_name)


class CertificateAuthority:
    """The loaded CA: mints, caches and reuses a certificate per host."""

    def __init__(
        self,
        certificate: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        *,
        cert_path: Path | None = None,
        cache_size: int = 1024,
        leaf_days: int = _LEAF_DAYS,
    ) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError("the CA key is not an EC key; run sluice ca init --force")
        self.certificate = certificate
        self.cert_path = cert_path
        self._key = key
        self._cache_size = cache_size
        self._leaf_days = leaf_days
        # One key for every leaf of this process: minting is then one signature.
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._ca_pem = certificate.public_bytes(serialization.Encoding.PEM)
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        self._cache: OrderedDict[str, Minted] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, data_dir: Path, **kwargs: int) -> CertificateAuthority:
        """The CA under ``data_dir``; CaError naming ``sluice ca init`` when there is none."""
        cert_path, key_path = ca_paths(data_dir)
        if not cert_path.exists() or not key_path.exists():
            raise CaError(
                f"no CA under {cert_path.parent}: run `sluice ca init --config FILE` first"
            )
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except OSError as exc:
            raise CaError(f"cannot read the CA under {cert_path.parent}: {exc}") from exc
        except ValueError as exc:
            raise CaError(f"the CA under {cert_path.parent} is not readable PEM: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"{key_path} is not an EC key: run sluice ca init --force")
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise CaError(f"{cert_path} and {key_path} do not belong together")
        return cls(certificate, key, cert_path=cert_path, **kwargs)

    def mint(self, host: str) -> Minted:
        """The certificate for ``host``: from the cache while it has a day left, else new."""
        key = host.strip().rstrip(".").lower()
        with self._lock:
            minted = self._cache.get(key)
            if minted is not None and minted.not_after - _now() > _RENEW_BEFORE:
                self._cache.move_to_end(key)
                return minted
        minted = self._mint(host, key)
        with self._lock:
            self._cache[key] = minted
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return minted

    def context(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting ``host``'s certificate."""
        return self.mint(host).context

    def _mint(self, host: str, key: str) -> Minted:
        san = _san(host)
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .issuer_name(self.certificate.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(
                min(
                    now + datetime.timedelta(days=self._leaf_days),
                    self.certificate.not_valid_after_utc,
                )
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(self._aki, critical=False)
        )
        value = san.value
        common_name = str(value)
        if len(common_name) < 64:
            builder = builder.subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
            )
            builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
        else:
            # RFC 5280 §4.2.1.6: with an empty subject the SAN must be critical.
            builder = builder.subject_name(x509.Name([]))
            builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=True)
        certificate = builder.sign(self._key, hashes.SHA256())
        chain = certificate.public_bytes(serialization.Encoding.PEM) + self._ca_pem
        return Minted(host=key, certificate=certificate, context=self._server_context(chain))

    def _server_context(self, chain: bytes) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # Only HTTP/1.1 is spoken inside; a client offering h2 must fall back.
        context.set_alpn_protocols(["http/1.1"])
        _load_chain(context, chain + self._leaf_key_pem)
        return context


def _load_chain(context: ssl.SSLContext, pem: bytes) -> None:
    """``load_cert_chain`` from memory: Python's ssl reads only files, so a memfd stands
    in (Linux); elsewhere a private temporary file, removed at once."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("sluice-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    directory = tempfile.mkdtemp(prefix="sluice-leaf-")
    path = Path(directory) / secrets.token_hex(8)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as file:
            file.write(pem)
        context.load_cert_chain(path)
    finally:
        path.unlink(missing_ok=True)
        os.rmdir(directory)
