"""Smoke test for the reference-node fixture: two reference nodes federate.

A publishes a ``local`` and a ``company`` fact; B (which pulls from A) must end
up with the company fact, unchanged in id and cid, and never with the local one.
"""

from __future__ import annotations

import time

import pytest

from .refnode import ReferenceNode, ReferenceUnavailable, ensure_reference_venv, federate

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def reference_venv():
    try:
        return ensure_reference_venv()
    except ReferenceUnavailable as exc:
        pytest.skip(f"!!! INTEROP NOT RUN: reference node stigmem-node 0.9.0a12 unavailable: {exc.reason}")


def test_two_reference_nodes_replicate_company_not_local(reference_venv, tmp_path):
    with ReferenceNode(tmp_path / "a", venv=reference_venv, pull_interval_s=1) as a, ReferenceNode(
        tmp_path / "b", venv=reference_venv, pull_interval_s=1
    ) as b:
        federate(puller=b, origin=a)
        assert {p["status"] for p in a.list_peers()} == {"active"}
        assert {p["status"] for p in b.list_peers()} == {"active"}

        base = {
            "entity": "stigmem://interop/item/1",
            "source": "stigmem://interop/agent/a",
            "confidence": 0.9,
        }
        local = a.assert_fact(
            {**base, "relation": "memory:secret", "value": {"type": "string", "v": "stays on A"}, "scope": "local"}
        )
        company = a.assert_fact(
            {**base, "relation": "memory:note", "value": {"type": "string", "v": "shared with B"}, "scope": "company"}
        )

        deadline = time.monotonic() + 20
        got: dict[str, dict] = {}
        while time.monotonic() < deadline:
            got = {f["id"]: f for f in b.query_facts(entity=base["entity"])}
            if company["id"] in got:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"B never received A's company fact; B log:\n{b.log_tail()}")

        copy = got[company["id"]]
        assert copy["cid"] == company["cid"]
        assert copy["value"] == company["value"]
        assert copy["received_from"] == a.node_id
        assert copy["origin_node_id"] == a.node_id
        # The local fact was asserted first, so it would have been in the same page.
        assert local["id"] not in got
        assert all(f["scope"] != "local" for f in got.values())
