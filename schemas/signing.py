"""Signed learning artefacts: the learner signs every prompt version and checkpoint card it
publishes (ed25519); agents check the signature before they switch.

The signature travels in the Kafka header ``atlas-signature`` and covers the topic, the key and
the exact value bytes, so a signed event can be neither altered nor replayed under another
agent's key or on another topic, and the Avro contracts stay as they are. A tombstone is
signed the same way (its value is empty), so nobody else can delete a live prompt either.

Keys: the private key from ``ATLAS_SIGNING_KEY`` (base64 of its 32 raw bytes) or the 0600 file
``$ATLAS_HOME/secrets/signing.key``; the public key from ``ATLAS_SIGNING_PUBLIC_KEY`` or
``$ATLAS_HOME/secrets/signing.pub``. ``atlas signing init`` makes both.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr

from schemas.secrets import SecretFileError, read_secret, write_private

SIGNATURE_HEADER = "atlas-signature"
PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"


class SignatureError(Exception):
    """A message that is unsigned or whose signature does not verify; one line."""


def _signed_bytes(topic: str, key: bytes | None, value: bytes | None) -> bytes:
    return b"\0".join((b"atlas-stream/1", topic.encode(), key or b"", value or b""))


def _raw(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretFileError(f"the {what} is not base64") from None
    if len(raw) != 32:
        raise SecretFileError(f"the {what} must be 32 bytes of base64, not {len(raw)}")
    return raw


class Signer:
    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key

    @classmethod
    def from_secret(cls, secret: SecretStr) -> Signer:
        return cls(Ed25519PrivateKey.from_private_bytes(_raw(secret.get_secret_value(), "key")))

    def public_key(self) -> str:
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def header(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[str, bytes]:
        return SIGNATURE_HEADER, self._key.sign(_signed_bytes(topic, key, value))


class Verifier:
    def __init__(self, public_key: str):
        self._key = Ed25519PublicKey.from_public_bytes(_raw(public_key, "public key"))

    def check(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
    ) -> None:
        """Raises :class:`SignatureError` unless the message carries exactly one valid
        signature by this key."""
        found = [v for name, v in headers or [] if name == SIGNATURE_HEADER]
        if not found or not found[0]:
            raise SignatureError("unsigned (no atlas-signature header)")
        if len(found) > 1:
            raise SignatureError("more than one atlas-signature header")
        try:
            self._key.verify(found[0], _signed_bytes(topic, key, value))
        except InvalidSignature:
            raise SignatureError("the signature does not verify with the configured key") from None


def create_keys(folder: Path) -> Signer:
    """A new key pair in ``folder``: the private key 0600, the public key beside it."""
    private = Ed25519PrivateKey.generate()
    signer = Signer(private)
    raw = private.private_bytes_raw()
    write_private(folder / PRIVATE_KEY_FILE, base64.b64encode(raw).decode() + "\n")
    write_private(folder / PUBLIC_KEY_FILE, signer.public_key() + "\n")
    return signer


def load_signer(secret: SecretStr | None, folder: Path) -> Signer | None:
    """The learner's signer: from the environment, else the key file; None if neither."""
    if secret is not None:
        return Signer.from_secret(secret)
    path = folder / PRIVATE_KEY_FILE
    return Signer.from_secret(read_secret(path)) if path.exists() else None


def load_verifier(public_key: str | None, folder: Path) -> Verifier | None:
    """The agents' verifier: from the environment, else the public key file; None if
    neither (signatures are then not checked)."""
    if public_key:
        return Verifier(public_key)
    path = folder / PUBLIC_KEY_FILE
    return Verifier(path.read_text()) if path.exists() else None
