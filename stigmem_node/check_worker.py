"""A process that checks pulled pages of facts, for a subscriber, on another core.

Checking a pulled page (parsing it, validating each fact and its CID, building the origin
tuple each signature covers, and above all one Ed25519 verification per fact) costs about
three times what storing it does, and threads cannot share it: they hold one GIL.  So the
subscriber hands each page, as the bytes it received, to one of a few such processes
(``stigmem_node.replication.checker.ProcessChecker``) and stores other pages meanwhile.  The
check is ``page_check.check_page``, exactly as the subscriber would run it itself.

Protocol on stdin/stdout, big-endian, one request answered before the next is read:

    request   u32 body length, then the body:
              u8 key count, 32 bytes per public key,
              u16 policy length, the policy as JSON {"node_id", "scopes", "instructions"},
              the page as the peer sent it (a JSON v2 page {v, facts, cursor, has_more})
    answer    u32 length, then the ``page_check.CheckedPage``, pickled as plain values: the
              origin blocks, one tuple of values per fact, the rejections

The parent is trusted (it started this process, and only it reads the answer); a request
that does not parse ends the process.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
from collections.abc import Sequence
from typing import BinaryIO

from stigmem_node.facts import Fact, Origin
from stigmem_node.origin import PulledEntry
from stigmem_node.page_check import CheckedPage, PagePolicy, Rejection, check_page

__all__ = ["check_request", "decode_answer", "decode_request", "encode_answer", "encode_request", "serve"]

_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")


def encode_request(policy: PagePolicy, keys: Sequence[bytes], page: bytes) -> bytes:
    """One request: the peer's policy, its raw 32-byte public keys and the page's bytes."""
    rules = json.dumps({"node_id": policy.node_id, "scopes": list(policy.scopes),
                        "instructions": policy.instructions}).encode()
    if len(keys) > 255 or len(rules) > 0xFFFF or any(len(k) != 32 for k in keys):
        raise ValueError("too many keys, a key that is not 32 bytes, or too large a policy")
    body = b"".join((bytes([len(keys)]), *keys, _U16.pack(len(rules)), rules, page))
    return _U32.pack(len(body)) + body


def decode_request(body: bytes) -> tuple[PagePolicy, list[bytes], bytes]:
    """The policy, keys and page of a request body (``ValueError`` if it does not parse)."""
    try:
        count = body[0]
        pos = 1 + 32 * count
        keys = [body[1 + 32 * i:1 + 32 * (i + 1)] for i in range(count)]
        (size,) = _U16.unpack_from(body, pos)
        rules = json.loads(body[pos + 2:pos + 2 + size])
        page = body[pos + 2 + size:]
        scopes = tuple(str(s) for s in rules["scopes"])
        policy = PagePolicy(str(rules["node_id"]), scopes, rules["instructions"] is True)
    except (IndexError, KeyError, TypeError, struct.error, ValueError):
        raise ValueError("malformed request") from None
    if pos + 2 + size > len(body) or any(len(k) != 32 for k in keys):
        raise ValueError("malformed request")
    return policy, keys, page


def check_request(body: bytes) -> bytes:
    """The answer's body for one request's body: its page checked."""
    policy, keys, page = decode_request(body)
    facts = json.loads(page)["facts"]
    if not isinstance(facts, list):
        raise ValueError("the page has no list of facts")
    return encode_answer(check_page(policy, facts, keys))


# A checked fact as it travels: its values in ``Fact``'s field order up to ``origin_sig``,
# then the index of its origin block.  (Pickling the objects themselves takes seven times as
# long to write and twice as long to read: a dataclass with slots pickles field by field, in
# Python.)
_Row = tuple[str, str, str, str, str, str, str, str, str, str, str | None, float, str, str, str | None, int]


def encode_answer(checked: CheckedPage) -> bytes:
    origins: dict[int, int] = {}
    blocks: list[Origin] = []
    rows: list[_Row] = []
    for entry in checked.entries:
        f = entry.fact
        if f.received_from is not None or f.received_at is not None or f.origin_sig != entry.origin_sig:
            raise ValueError("a checked fact carries more than a pulled one does")
        at = origins.get(id(entry.origin))
        if at is None:
            at = origins[id(entry.origin)] = len(blocks)
            blocks.append(entry.origin)
        rows.append((f.id, f.cid, f.entity, f.relation, f.value_type, f.value_v, f.interpret_as, f.source,
                     f.timestamp, f.hlc, f.valid_until, f.confidence, f.scope, f.origin_node_id, f.origin_sig, at))
    return pickle.dumps((blocks, rows, checked.rejections), protocol=pickle.HIGHEST_PROTOCOL)


def decode_answer(body: bytes) -> CheckedPage:
    """The checked page of an answer's body (from the worker this process started)."""
    blocks: list[Origin]
    rows: list[_Row]
    rejections: list[Rejection]
    try:
        blocks, rows, rejections = pickle.loads(body)  # noqa: S301 - written by our own worker, read by nobody else
        entries = []
        for row in rows:
            origin = blocks[row[15]]
            fact = Fact(*row[:15], origin)
            entries.append(PulledEntry(fact, origin, row[14]))  # type: ignore[arg-type]
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError):
        raise ValueError("the worker answered something else than a checked page") from None
    return CheckedPage(entries, rejections)


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer requests until the input ends."""
    while (head := _read_exact(inp, 4)) is not None:
        body = _read_exact(inp, _U32.unpack(head)[0])
        if body is None:
            return
        answer = check_request(body)
        out.write(_U32.pack(len(answer)) + answer)
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
