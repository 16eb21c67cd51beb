"""A private certificate authority for the local stack, made at ``atlas up --secure``.

One CA per stack signs one certificate for the node (CN ``atlas-node``; SAN 127.0.0.1,
localhost), used by the Kafka broker's SASL_SSL listener, by its controller listener (mutual
TLS: the node's own certificate is the only client the controller accepts), and by the local
store's HTTPS. Files are PEM (Kafka reads PEM keystores since KIP-651), private keys 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from schemas.secrets import write_private

NODE_NAME = "atlas-node"
VALID_FOR = dt.timedelta(days=825)


@dataclass(frozen=True)
class StackTls:
    ca_cert: Path  # trust anchor for every client
    node_keystore: Path  # the node's key + certificate chain, PEM (0600)
    node_cert: Path
    node_key: Path

    @property
    def node_principal(self) -> str:
        return f"User:CN={NODE_NAME}"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "atlas-stream local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_stack_tls(folder: Path) -> StackTls:
    """The stack's CA and node certificate in ``folder``, made the first time."""
    tls = StackTls(
        ca_cert=folder / "ca.pem",
        node_keystore=folder / "node-keystore.pem",
        node_cert=folder / "node.pem",
        node_key=folder / "node-key.pem",
    )
    if all(p.exists() for p in (tls.ca_cert, tls.node_keystore, tls.node_cert, tls.node_key)):
        return tls
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("atlas-stream local CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    node_key = ec.generate_private_key(ec.SECP256R1())
    node = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NODE_NAME)]))
        .issuer_name(ca_name)
        .public_key(node_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    node_pem = node.public_bytes(serialization.Encoding.PEM)
    write_private(tls.node_key, _pem_key(node_key))
    write_private(tls.node_keystore, _pem_key(node_key) + node_pem + ca_pem)
    write_private(tls.node_cert, node_pem + ca_pem)
    write_private(tls.ca_cert, ca_pem)
    return tls
