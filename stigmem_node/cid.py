"""CID v2: the content address of a fact, as the reference node computes it.

``"sha256:" + hex(SHA-256(body))`` where ``body`` is the compact,
key-sorted JSON (``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``, UTF-8; *not* RFC 8785) of exactly eight members:
``confidence`` (a JSON float, Python ``repr`` form: ``0.9``, ``1.0``, ``1e-05``),
``entity``, ``interpret_as``, ``relation``, ``scope``, ``source``, ``value_type`` and
``value_v``.  ``value_v`` is the *stored text* of the value (``values``: ``"true"``,
``"null"``, ``"42"``, ``"42.0"``, the string itself).  ``id``, ``timestamp``, ``hlc`` and
``valid_until`` are not covered (``id`` and ``valid_until`` are bound by the origin
signature instead).  The known-answer vectors in ``tests/test_facts.py`` were computed
with the reference's own code.  The same POST body gives the same CID on our node as on a
reference node, apart from the reference's entity/source normalisation, which we do not do.
"""

from __future__ import annotations

import json
import json.encoder
import math
from typing import TYPE_CHECKING, Final

from stigmem_node.encoding import sha256_hex
from stigmem_node.values import DEFAULT_INTERPRET_AS

if TYPE_CHECKING:
    from stigmem_node.facts import Fact, FactInput

__all__ = ["cid_of", "compute_cid"]

# A JSON string literal, escaped as json.dumps(ensure_ascii=False) escapes it (C speed).
_json_string: Final = json.encoder.encode_basestring


def compute_cid(
    *,
    entity: str,
    relation: str,
    value_type: str,
    value_v: str,
    source: str,
    scope: str,
    confidence: float,
    interpret_as: str = DEFAULT_INTERPRET_AS,
) -> str:
    """CID v2, byte-for-byte as the reference computes it (see the module docstring).

    For the usual arguments (exact ``str`` texts, a finite confidence) the JSON text is
    assembled directly, members in their sorted order, each string escaped by the encoder
    ``json.dumps(ensure_ascii=False)`` uses and the float written as it writes floats
    (``float.__repr__``): the same bytes (a test compares them), without building and
    sorting a dict on every fact."""
    conf = float(confidence)
    if (type(entity) is str and type(relation) is str and type(value_type) is str and type(value_v) is str
            and type(source) is str and type(scope) is str and type(interpret_as) is str and math.isfinite(conf)):
        text = "".join((
            '{"confidence":', float.__repr__(conf), ',"entity":', _json_string(entity),
            ',"interpret_as":', _json_string(interpret_as), ',"relation":', _json_string(relation),
            ',"scope":', _json_string(scope), ',"source":', _json_string(source),
            ',"value_type":', _json_string(value_type), ',"value_v":', _json_string(value_v), "}",
        ))
        return "sha256:" + sha256_hex(text.encode("utf-8"))
    body = {
        "confidence": conf,
        "entity": entity,
        "interpret_as": interpret_as,
        "relation": relation,
        "scope": scope,
        "source": source,
        "value_type": value_type,
        "value_v": value_v,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return "sha256:" + sha256_hex(text.encode("utf-8"))


def cid_of(f: FactInput | Fact) -> str:
    """The CID of a fact's content (see ``compute_cid``)."""
    return compute_cid(entity=f.entity, relation=f.relation, value_type=f.value_type, value_v=f.value_v,
                       source=f.source, scope=f.scope, confidence=f.confidence, interpret_as=f.interpret_as)
