"""Ed25519 key helpers and the signer interface.

Pure: parsing, generating and naming keys, and what a retiring key signs for its
successor.  Where keys are stored and which one is active is ``stigmem_node.identity``'s
business; everything that signs (declarations, the manifest, origin signatures) takes a
``Signer`` so that it can be tested with a bare key and no database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError

from stigmem_node.encoding import b64url_decode, b64url_encode, key_id, sorted_json

__all__ = [
    "ROTATION",
    "Ed25519Signing",
    "KeySigner",
    "Signer",
    "endorsement_payload",
    "generate_keypair",
    "is_weak_public_key",
    "key_id_of",
    "public_key_from_b64",
    "verifies",
    "verify_any",
]


class Signer(Protocol):
    """Something that signs with one Ed25519 key (the node's identity, or a bare key in tests)."""

    @property
    def key_id(self) -> str:
        """``sha256:`` + 32 hex digits of the public key (``encoding.key_id``)."""
        ...

    @property
    def public_key(self) -> str:
        """The raw 32-byte public key, base64url without padding."""
        ...

    def sign(self, message: bytes, /) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        ...


class Ed25519Signing:
    """Ed25519 signatures with one private key, made by libsodium (PyNaCl).  Ed25519 is
    deterministic (RFC 8032), so they are the bytes ``Ed25519PrivateKey.sign`` gives (a test
    compares them), in about half its time: the node signs every fact it asserts."""

    __slots__ = ("_secret",)

    def __init__(self, private: Ed25519PrivateKey) -> None:
        seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
        self._secret = sodium.crypto_sign_seed_keypair(seed)[1]

    def sign(self, message: bytes, /) -> bytes:
        return sodium.crypto_sign(message, self._secret)[: sodium.crypto_sign_BYTES]

    def __repr__(self) -> str:  # never show key material
        return "Ed25519Signing(...)"


class KeySigner:
    """A ``Signer`` over an in-memory private key."""

    __slots__ = ("_private", "_signing", "key_id", "public_key")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self._signing = Ed25519Signing(private)
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = b64url_encode(raw)
        self.key_id = key_id(raw)

    def sign(self, message: bytes, /) -> bytes:
        return self._signing.sign(message)

    def __repr__(self) -> str:  # never show key material
        return f"KeySigner(key_id={self.key_id!r})"


def generate_keypair() -> tuple[str, str]:
    """A new Ed25519 keypair as (private, public) raw 32-byte keys in base64url."""
    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64url_encode(raw_private), b64url_encode(raw_public)


# Encodings of the Ed25519 points of small order (and their non-canonical forms), with
# the sign bit of the last byte cleared.  A "public key" among them verifies a trivial
# signature over every message, so such keys are refused wherever a key is accepted.
_SMALL_ORDER: Final = frozenset(bytes.fromhex(h) for h in (
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
))


def is_weak_public_key(raw: bytes) -> bool:
    return raw[:31] + bytes([raw[31] & 0x7F]) in _SMALL_ORDER


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """Parse a base64url raw Ed25519 public key.  Raises ``ValueError``.

    Refuses keys of small order (see ``is_weak_public_key``).
    """
    raw = b64url_decode(text)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    if is_weak_public_key(raw):
        raise ValueError("an Ed25519 public key of small order is refused")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id_of(pubkey_b64: str) -> str:
    """Key id of a base64url public key.  Raises ``ValueError`` on bad base64url."""
    return key_id(b64url_decode(pubkey_b64))


ROTATION: Final = "stigmem-key-rotation"


def endorsement_payload(node_id: str, new_key_id: str, new_public_key: str) -> bytes:
    """What a retiring key signs to vouch for its successor (see docs/protocol.md, key rotation)."""
    return sorted_json({"federation_pubkey": new_public_key, "key_id": new_key_id, "node_id": node_id,
                        "type": ROTATION})


def verify_any(public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey], signature: Any,
               payload: Callable[[], bytes]) -> bool:
    """True if ``signature`` (base64url text of 64 bytes) verifies over ``payload()`` under
    any of ``public_keys``; never raises on bad input (a payload that cannot be built, bad
    base64, a wrong length: False); each key is tried with ``verifies``."""
    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
    if not keys or not isinstance(signature, str):
        return False
    try:
        sig = b64url_decode(signature)
        data = payload()
    except (TypeError, ValueError):  # bad base64, lone surrogates, unsortable lists
        return False
    return any(verifies(key, sig, data) for key in keys)


def verifies(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` (64 bytes) verifies over ``data`` under ``public_key``.

    Verified by libsodium, in a little over half the time OpenSSL takes (every peer token
    and every pulled fact is verified once).  libsodium verifies strictly (RFC 8032: S below
    the group order, R and the key canonical and not of small order): whatever it accepts,
    OpenSSL accepts too, and no honest signer makes a signature it refuses
    (tests/test_signing.py)."""
    if len(signature) != 64:
        return False
    try:
        sodium.crypto_sign_open(signature + data, public_key.public_bytes_raw())
    except BadSignatureError:
        return False
    return True
