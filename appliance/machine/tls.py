"""TLS for an appliance without a public certificate: a private CA and a server certificate.

Browsers only give a page the camera and microphone in a secure context, so a LAN appliance
needs HTTPS even without a domain. The installer makes a private CA (kept on the host; people
import ``ca.pem`` into their browsers or devices once) and a server certificate signed by it
for every name and address the appliance is reached by.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..fsutil import write_atomically

CA_DAYS = 3650
# Apple platforms refuse TLS server certificates valid for more than 825 days; a year stays clear.
SERVER_DAYS = 397
RENEW_BEFORE = dt.timedelta(days=30)
CLOCK_SKEW = dt.timedelta(hours=1)


@dataclass(frozen=True)
class CertificateFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsFiles:
    """What the appliance is configured with: ``cert``/``key`` (tls_cert, tls_key) and the CA
    people import (``ca_cert``)."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)




def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def subject_alternative_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses, each as the right kind of SAN entry."""
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def generate_ca(directory: Path, common_name: str = "confmeet private CA", days: int = CA_DAYS) -> CertificateFiles:
    """A new CA: ``ca.pem`` (public) and ``ca.key`` (0600) in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = CertificateFiles(cert=directory / "ca.pem", key=directory / "ca.key")
    write_atomically(files.key, _key_pem(key))
    write_atomically(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def issue_server_certificate(directory: Path, ca: CertificateFiles, names: Sequence[str],
                             days: int = SERVER_DAYS, not_before: dt.datetime | None = None) -> CertificateFiles:
    """A server certificate for ``names`` (host names and IP addresses) signed by ``ca``:
    ``cert.pem`` (the certificate followed by the CA's) and ``key.pem`` (0600) in ``directory``."""
    if not names:
        raise ValueError("a server certificate needs at least one host name or IP address")
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key} is not an EC key made by confmeet")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - CLOCK_SKEW)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(subject_alternative_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = CertificateFiles(cert=directory / "cert.pem", key=directory / "key.pem")
    write_atomically(files.key, _key_pem(key))
    write_atomically(files.cert, cert.public_bytes(serialization.Encoding.PEM)
                     + ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file (the server's own, in a chain file)."""
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def certificate_expiry(path: Path) -> dt.datetime:
    """When the (first) certificate in ``path`` stops being valid, in UTC."""
    return load_certificate(path).not_valid_after_utc


def certificate_fingerprint(path: Path) -> str:
    """SHA-256 of the (first) certificate in ``path``, hex: what a joining node pins (machine/join.py)."""
    return load_certificate(path).fingerprint(hashes.SHA256()).hex()


def certificate_names(path: Path) -> list[str]:
    """The DNS names and IP addresses the certificate is valid for."""
    try:
        san = load_certificate(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]


def _normalized(names: Sequence[str]) -> set[str]:
    out = set()
    for name in names:
        try:
            out.add(str(ipaddress.ip_address(name)))
        except ValueError:
            out.add(name.lower())
    return out


def key_matches(cert_path: Path, key_path: Path) -> bool:
    """Whether the private key belongs to the certificate."""
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return (key.public_key().public_bytes(serialization.Encoding.DER, spki)
            == load_certificate(cert_path).public_key().public_bytes(serialization.Encoding.DER, spki))


def ensure_certificates(directory: Path, names: Sequence[str], now: dt.datetime | None = None) -> TlsFiles:
    """The private CA and server certificate in ``directory``, made where missing. The server
    certificate is reissued when it expires within 30 days or does not cover every name."""
    directory = Path(directory)
    ca = CertificateFiles(cert=directory / "ca.pem", key=directory / "ca.key")
    if not (ca.cert.exists() and ca.key.exists()):
        ca = generate_ca(directory)
    server = CertificateFiles(cert=directory / "cert.pem", key=directory / "key.pem")
    current = server.cert.exists() and server.key.exists() \
        and certificate_expiry(server.cert) - (now or _now()) > RENEW_BEFORE \
        and _normalized(names) <= _normalized(certificate_names(server.cert)) \
        and key_matches(server.cert, server.key)
    if not current:
        server = issue_server_certificate(directory, ca, names)
    return TlsFiles(ca_cert=ca.cert, ca_key=ca.key, cert=server.cert, key=server.key)
