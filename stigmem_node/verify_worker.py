"""A process that checks Ed25519 signatures in batches, for a subscriber on another core.

Checking a pulled fact's origin signature is the largest single cost of replication, and
threads cannot share it: handing the GIL back and forth for every 40 µs check costs more than
it saves.  So the subscriber sends a whole page's signatures to this process at once
(``stigmem_node.replication.verifier.ProcessVerifier``) and prepares and stores other pages
meanwhile.  It imports nothing but libsodium's binding, and starts in a few tens of ms.

Protocol on stdin/stdout, big-endian, one request answered before the next is read:

    request   u32 body length, then the body:
              u8 key count, 32 bytes per public key,
              u32 item count, per item: u32 length, then the signature's 64 bytes followed by
              the signed message (libsodium's signed-message form)
    answer    u32 item count, then one byte per item: 1 if any key verifies it, else 0

The parent is trusted (it started this process); a request that does not parse ends the process.
Verification is libsodium's strict RFC 8032 check, as ``stigmem_node.keys.verifies``.
"""

from __future__ import annotations

import struct
import sys
from typing import BinaryIO

from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError

__all__ = ["decode_request", "encode_request", "serve", "verify_batch"]

_U32 = struct.Struct("!I")


def encode_request(keys: list[bytes], items: list[bytes]) -> bytes:
    """One request: the raw 32-byte public keys and the signed messages."""
    parts = [bytes([len(keys)]), *keys, _U32.pack(len(items))]
    for item in items:
        parts += (_U32.pack(len(item)), item)
    body = b"".join(parts)
    return _U32.pack(len(body)) + body


def decode_request(body: bytes) -> tuple[list[bytes], list[bytes]]:
    """The keys and items of a request body (``ValueError`` if it does not parse)."""
    try:
        return _decode(memoryview(body))
    except (IndexError, struct.error):
        raise ValueError("malformed request") from None


def _decode(view: memoryview) -> tuple[list[bytes], list[bytes]]:
    count, pos = view[0], 1
    keys = [bytes(view[pos + 32 * i:pos + 32 * (i + 1)]) for i in range(count)]
    pos += 32 * count
    (n,) = _U32.unpack_from(view, pos)
    pos += 4
    items = []
    for _ in range(n):
        (size,) = _U32.unpack_from(view, pos)
        pos += 4
        items.append(bytes(view[pos:pos + size]))
        pos += size
    if pos != len(view) or any(len(k) != 32 for k in keys):
        raise ValueError("malformed request")
    return keys, items


def verify_batch(keys: list[bytes], items: list[bytes]) -> bytes:
    """One byte per item: 1 if it verifies under any of ``keys``."""
    out = bytearray(len(items))
    for i, signed in enumerate(items):
        if len(signed) < 64:
            continue
        for key in keys:
            try:
                sodium.crypto_sign_open(signed, key)
            except BadSignatureError:
                continue
            out[i] = 1
            break
    return bytes(out)


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer requests until the input ends."""
    while (head := _read_exact(inp, 4)) is not None:
        body = _read_exact(inp, _U32.unpack(head)[0])
        if body is None:
            return
        verdicts = verify_batch(*decode_request(body))
        out.write(_U32.pack(len(verdicts)) + verdicts)
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
