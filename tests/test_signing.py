"""The node signs with libsodium (``keys.Ed25519Signing``): its signatures are the bytes
``cryptography``'s Ed25519 gives for the same key and message, and they verify."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from stigmem_node.keys import Ed25519Signing, KeySigner


@settings(max_examples=200, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=2000))
def test_libsodium_signatures_are_the_cryptography_signatures(seed: bytes, message: bytes) -> None:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    signature = Ed25519Signing(private).sign(message)
    assert signature == private.sign(message) == KeySigner(private).sign(message)
    private.public_key().verify(signature, message)


def test_the_signer_shows_no_key_material() -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    assert repr(Ed25519Signing(private)) == "Ed25519Signing(...)"
    assert bytes(range(32)).hex() not in repr(vars(Ed25519Signing)) + repr(Ed25519Signing(private))
