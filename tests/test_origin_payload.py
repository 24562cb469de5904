"""The origin-signature payload assembled directly from its strings is the RFC 8785 text of
the tuple: the same bytes as ``encoding.jcs`` and the ``rfc8785`` package give, for any text
(escapes, non-ASCII, astral characters, lists in any order), and the same refusal of a lone
surrogate.  Values that are not plain strings take the general ``jcs`` path."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from stigmem_node.encoding import jcs
from stigmem_node.origin import ORIGIN_TUPLE_VERSION, origin_sig_payload

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def _general(f: dict[str, Any]) -> dict[str, Any]:
    return {"cid": f["cid"], "entity_uri": f["entity_uri"], "fact_id": f["fact_id"],
            "origin_allowed_scopes": sorted(f["origin_allowed_scopes"]),
            "origin_allowed_tenants": sorted(f["origin_allowed_tenants"]), "origin_node_id": f["origin_node_id"],
            "origin_tenant": f["origin_tenant"], "tv": ORIGIN_TUPLE_VERSION, "valid_until": f["valid_until"]}


@settings(max_examples=300, deadline=None)
@given(cid=TEXT, entity_uri=TEXT, fact_id=TEXT, origin_node_id=TEXT, origin_tenant=TEXT,
       origin_allowed_scopes=st.lists(TEXT, max_size=4), origin_allowed_tenants=st.lists(TEXT, max_size=4),
       valid_until=st.none() | TEXT)
def test_the_assembled_payload_is_the_rfc8785_text_of_the_tuple(**f: Any) -> None:
    payload = origin_sig_payload(**f)
    assert payload == jcs(_general(f)) == rfc8785.dumps(_general(f))


def test_a_lone_surrogate_is_refused_as_jcs_refuses_it() -> None:
    f = {"cid": "c", "entity_uri": "u", "fact_id": "\ud800", "origin_allowed_scopes": ["company"],
         "origin_allowed_tenants": ["default"], "origin_node_id": "n", "origin_tenant": "default", "valid_until": None}
    with pytest.raises(UnicodeEncodeError):
        jcs(_general(f))
    with pytest.raises(UnicodeEncodeError):
        origin_sig_payload(**f)


class _Text(str):
    __slots__ = ()


def test_values_that_are_not_plain_strings_take_the_general_path() -> None:
    f = {"cid": _Text("c"), "entity_uri": "u", "fact_id": "id", "origin_allowed_scopes": ("team", "company"),
         "origin_allowed_tenants": ["default"], "origin_node_id": "n", "origin_tenant": "default",
         "valid_until": "2027-03-01T09:00:00Z"}
    assert origin_sig_payload(**f) == jcs(_general(f))
    with pytest.raises(TypeError):  # a number is refused, as jcs refuses it
        origin_sig_payload(**{**f, "valid_until": 5})
