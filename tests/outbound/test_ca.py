"""The outbound door's CA: `sluice ca init`, and the certificates Sluice mints from it."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from relay.outbound.ca import CaError, CertificateAuthority, create_ca

SLUICE = str(Path(sys.executable).parent / "sluice")


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=60)


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sluice.toml"
    path.write_text('[storage]\ndata_dir = "data"\n\n[server]\nhosts = ["social.example"]\n')
    return path


def test_ca_init_writes_a_private_key_and_prints_the_certificate_path_last(
    tmp_path: Path,
) -> None:
    config = config_file(tmp_path)
    result = sluice("ca", "init", "--config", str(config))
    assert result.returncode == 0, result.stderr
    cert_path = Path(result.stdout.strip().splitlines()[-1])
    assert cert_path.parent == tmp_path / "data" / "ca"
    key_path = cert_path.parent / "sluice-ca-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert "Sluice" in cert.subject.rfc4514_string()
    assert "social.example" in cert.subject.rfc4514_string()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.days >= 9 * 365

    # Again: the CA the instance already trusts is kept, and the path is still last.
    key_before, cert_before = key_path.read_bytes(), cert_path.read_bytes()
    again = sluice("ca", "init", "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(cert_path)
    assert "exists already" in again.stderr
    assert (key_path.read_bytes(), cert_path.read_bytes()) == (key_before, cert_before)

    forced = sluice("ca", "init", "--force", "--config", str(config))
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip().splitlines()[-1] == str(cert_path)
    assert key_path.read_bytes() != key_before
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_loading_a_missing_ca_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(CaError, match="sluice ca init"):
        CertificateAuthority.load(tmp_path)


def verify(ca: CertificateAuthority, leaf: x509.Certificate, name: x509.GeneralName) -> None:
    """Verify as a strict client does (cryptography's RFC 5280 verifier), the CA the only root."""
    verifier = PolicyBuilder().store(Store([ca.certificate])).build_server_verifier(name)
    verifier.verify(leaf, [])


def test_a_minted_certificate_verifies_against_the_ca_and_names_the_host(tmp_path: Path) -> None:
    create_ca(tmp_path)
    ca = CertificateAuthority.load(tmp_path)
    minted = ca.mint("Social.Example.")
    sans = minted.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == ["social.example"]
    eku = minted.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = minted.not_after - minted.certificate.not_valid_before_utc
    assert 1 <= lifetime.days <= 31
    verify(ca, minted.certificate, x509.DNSName("social.example"))

    ip = ca.mint("192.0.2.7").certificate
    ip_sans = ip.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ip_sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]
    verify(ca, ip, x509.IPAddress(ipaddress.ip_address("192.0.2.7")))

    # Cached and reused, per host.
    assert ca.mint("social.example") is minted
    assert ca.mint("other.example") is not minted

    with pytest.raises(CaError, match="host name"):
        ca.mint("bad host/")


async def test_a_tls_client_trusting_only_the_ca_accepts_the_minted_certificate(
    tmp_path: Path,
) -> None:
    create_ca(tmp_path)
    ca = CertificateAuthority.load(tmp_path)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ca.context("social.example"))
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cafile=ca.cert_path)  # the only trust anchor
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="social.example"
        )
        assert await reader.read() == b"hello"
        writer.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname="other.example"
            )
    finally:
        server.close()
        await server.wait_closed()
