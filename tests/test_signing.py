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


def _verifies_with_openssl(public, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=600),
       flip=st.integers(min_value=-1, max_value=64 * 8 - 1), other=st.booleans())
def test_verify_any_by_libsodium_agrees_with_openssl(seed: bytes, message: bytes, flip: int, other: bool) -> None:
    """Every honest signature verifies; a signature with any one bit flipped, or under another
    key, is refused by both (libsodium is never looser than OpenSSL)."""
    from stigmem_node.encoding import b64url_encode
    from stigmem_node.keys import verify_any

    private = Ed25519PrivateKey.from_private_bytes(seed)
    signature = bytearray(private.sign(message))
    if flip >= 0:
        signature[flip // 8] ^= 1 << (flip % 8)
    public = Ed25519PrivateKey.generate().public_key() if other else private.public_key()
    ours = verify_any([public], b64url_encode(bytes(signature)), lambda: message)
    assert ours == _verifies_with_openssl(public, bytes(signature), message)
    assert ours == (flip < 0 and not other)


def test_verify_any_refuses_a_non_canonical_s_that_names_the_same_signature() -> None:
    """S + L (the group order) is the same point arithmetic: a strict verifier refuses it, so
    no second spelling of a signature verifies."""
    from stigmem_node.encoding import b64url_encode
    from stigmem_node.keys import verify_any

    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    message = b"one fact"
    signature = private.sign(message)
    order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(signature[32:], "little") + order
    if s < 2**256:
        malleable = signature[:32] + s.to_bytes(32, "little")
        assert not verify_any([private.public_key()], b64url_encode(malleable), lambda: message)
    assert verify_any([private.public_key()], b64url_encode(signature), lambda: message)
