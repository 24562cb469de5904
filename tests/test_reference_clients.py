"""``GET /v1/facts`` as clients written for the reference node use it, on real servers and
both engines: ``total`` and ``X-Total-Count``, expired facts left out unless
``include_expired=true``, ``valid_until`` echoed exactly as given, and the reference's
well-known fields ``namespaces`` and ``source_attestation``.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from stigmem_node.keys import public_key_from_b64
from stigmem_node.origin import verify_origin
from tests.nodes import ServedNode
from tests.test_replication import federate, pull

FACTS = "/v1/facts"


def at(seconds: float, offset_hours: float = 0) -> str:
    """Now plus ``seconds``, as RFC 3339 text in the UTC offset ``offset_hours``."""
    dt = (datetime.now(UTC) + timedelta(seconds=seconds)).astimezone(timezone(timedelta(hours=offset_hours)))
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def body(entity: str, *, relation: str = "memory:x", scope: str = "company", source: str = "agent:a",
         v: Any = "x", **extra: Any) -> dict[str, Any]:
    return {"entity": entity, "relation": relation, "value": {"type": "string", "v": v}, "source": source,
            "scope": scope, **extra}


def post(n: ServedNode, facts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with n.client() as c:
        res = c.post(FACTS, json={"facts": facts})
    assert res.status_code in (200, 201), res.text
    return res.json()["facts"]


def get(n: ServedNode, **params: Any) -> dict[str, Any]:
    with n.client() as c:
        res = c.get(FACTS, params=params)
    assert res.status_code == 200, res.text
    page = res.json()
    assert res.headers["X-Total-Count"] == str(page["total"]), (res.headers, page["total"])
    return page


def every(n: ServedNode, limit: int = 2, **params: Any) -> tuple[list[str], set[int]]:
    """The ids of every page from the start, and the totals the pages gave."""
    ids: list[str] = []
    totals: set[int] = set()
    cursor = None
    while True:
        page = get(n, limit=limit, **params, **({"cursor": cursor} if cursor else {}))
        ids += [f["id"] for f in page["facts"]]
        totals.add(page["total"])
        if not page["has_more"]:
            return ids, totals
        cursor = page["cursor"]


def listed(n: ServedNode, **params: Any) -> list[str]:
    return [f["id"] for f in get(n, limit=500, **params)["facts"]]


# --------------------------------------------------------------------------- total


def test_total_counts_every_fact_matching_the_filters_whatever_the_page(node: ServedNode):
    t = uuid.uuid4().hex[:8]
    e1, e2 = f"stigmem://t/{t}/1", f"stigmem://t/{t}/2"
    live = [body(e1, relation=f"memory:r{i % 2}", scope=("company", "public")[i % 3 == 0],
                 source=f"agent:{i % 3}", v=f"v{i}") for i in range(7)]
    live += [body(e2, v="w1"), body(e2, v="w2", valid_until=at(3600))]
    expired = [body(e1, v="old1", valid_until=at(-3600)), body(e1, v="old2", valid_until=at(-60, 14))]
    stored = post(node, live + expired)
    by_body = list(zip(live + expired, stored))

    def expected(include_expired: bool = False, **f: str) -> list[str]:
        return [s["id"] for b, s in by_body
                if (include_expired or b not in expired) and all(b[k] == v for k, v in f.items())]

    cases: list[dict[str, str]] = [
        {"entity": e1}, {"entity": e1, "relation": "memory:r1"}, {"scope": "public"}, {"source": "agent:2"},
        {"entity": e1, "scope": "company", "source": "agent:1"}, {"entity": e2}, {}, {"entity": "stigmem://none"},
    ]
    for f in cases:
        for include in (False, True):
            params = {**f, **({"include_expired": "true"} if include else {})}
            ids, totals = every(node, **params)
            assert ids == expected(include, **f), params
            # Every page, the first and the last, gives the same total: the matches, not the page.
            assert totals == {len(ids)}, (params, totals)
    assert get(node, entity=e1, limit=1)["total"] == 7
    assert get(node, entity=e1, limit=1, include_expired="false")["total"] == 7
    assert get(node, entity=e1, limit=1, include_expired="true")["total"] == 9
    # A cursor past the end: an empty page, the same total.
    end = get(node, limit=500, include_expired="true")["cursor"]
    page = get(node, entity=e1, cursor=end)
    assert page["facts"] == [] and page["total"] == 7 and page["has_more"] is False


# --------------------------------------------------------------------------- expiry


def test_expired_facts_are_left_out_unless_include_expired_is_true(node: ServedNode):
    t = uuid.uuid4().hex[:8]
    soon = at(2)
    cases = {
        "never": None,
        "future": at(3600),
        # An hour ahead, written at UTC-12: its text sorts before now, its instant is after.
        "future_west": at(3600, -12),
        # An hour ago, written at UTC+14: its text sorts after now, its instant is before.
        "past_east": at(-3600, 14),
        "past": "2001-01-01T00:00:00Z",
        "soon": soon,
    }
    stored = post(node, [body(f"stigmem://t/{t}/{k}", valid_until=vu) for k, vu in cases.items()])
    ids = {k: s["id"] for k, s in zip(cases, stored)}
    assert set(listed(node)) == {ids[k] for k in ("never", "future", "future_west", "soon")}
    assert set(listed(node, include_expired="true")) == set(ids.values())

    deadline = datetime.fromisoformat(soon.replace("Z", "+00:00"))
    while datetime.now(UTC) <= deadline + timedelta(milliseconds=50):
        time.sleep(0.1)
    assert set(listed(node)) == {ids[k] for k in ("never", "future", "future_west")}
    assert get(node)["total"] == 3 and get(node, include_expired="true")["total"] == 6

    # By id, an expired fact is still there, as it is on the reference: expiry hides a fact
    # from listings, it does not delete it.
    for k in ("past", "past_east", "soon"):
        with node.client() as c:
            res = c.get(f"{FACTS}/{ids[k]}")
        assert res.status_code == 200 and res.json()["valid_until"] == cases[k], res.text

    # The command line lists the same way.
    cli = node.cli_json("facts", "list", "--limit", "500")
    assert {f["id"] for f in cli} == {ids[k] for k in ("never", "future", "future_west")}
    cli = node.cli_json("facts", "list", "--limit", "500", "--include-expired")
    assert {f["id"] for f in cli} == set(ids.values())


@pytest.mark.parametrize("raw", ["1", "0", "True", "FALSE", "yes", "", "true ", "on"])
def test_include_expired_takes_true_or_false_only(node: ServedNode, raw: str):
    with node.client() as c:
        res = c.get(FACTS, params={"include_expired": raw})
    assert res.status_code == 422, res.text
    assert res.json()["error"] == "invalid_request" and res.json()["field"] == "include_expired"


# --------------------------------------------------------------------------- valid_until text


GIVEN = ["2030-01-01T00:00:00Z", "2030-01-01T01:00:00+01:00", "2030-01-01T00:00:00.5Z",
         "2030-01-01T00:00:00.123456789-03:30", "2030-01-01t00:00:00z", "2030-01-01T00:00:00.000000Z"]
NORMALISED = ["2030-01-01T00:00:00.000000Z", "2030-01-01T00:00:00.000000Z", "2030-01-01T00:00:00.500000Z",
              "2030-01-01T03:30:00.123456Z", "2030-01-01T00:00:00.000000Z", "2030-01-01T00:00:00.000000Z"]


def test_valid_until_is_echoed_exactly_as_given_and_signed_so(node: ServedNode):
    t = uuid.uuid4().hex[:8]
    stored = post(node, [body(f"stigmem://t/{t}/{i}", valid_until=vu) for i, vu in enumerate(GIVEN)])
    wk = node.well_known()
    key = public_key_from_b64(wk["federation_pubkey"])
    for vu, column, s in zip(GIVEN, NORMALISED, stored):
        assert s["valid_until"] == vu
        with node.client() as c:
            assert c.get(f"{FACTS}/{s['id']}").json()["valid_until"] == vu
        # The column the filters compare holds the instant in one sortable form.
        assert node.sql("SELECT valid_until FROM facts WHERE id = ?", (s["id"],)) == [(column,)]
        # The origin signature covers the text as given (what peers receive and check).
        assert verify_origin(key, s_sig(node, s["id"]), fact_id=s["id"], cid=s["cid"], entity_uri=wk["entity_uri"],
                             origin_node_id=wk["node_id"], origin_allowed_scopes=["company"],
                             origin_allowed_tenants=["default"], origin_tenant="default", valid_until=vu)
    assert {f["id"]: f["valid_until"] for f in get(node, limit=500)["facts"]} == {
        s["id"]: vu for vu, s in zip(GIVEN, stored)}

    # The same content and the same instant, spelt otherwise: the stored fact, as first written.
    again = post(node, [body(f"stigmem://t/{t}/0", valid_until="2029-12-31T23:00:00-01:00")])[0]
    assert again["id"] == stored[0]["id"] and again["valid_until"] == GIVEN[0]


def s_sig(node: ServedNode, fact_id: str) -> str:
    return node.sql("SELECT origin_sig FROM facts WHERE id = ?", (fact_id,))[0][0]


@pytest.mark.parametrize("text", ["2030-01-01T00:00:00+0100", "20300101T000000Z", "2030-01-01 00:00:00Z",
                                  "2030-01-01T00:00Z", "2030-01-01T00:00:00", "2030-01-01T00:00:00.Z",
                                  "2030-02-30T00:00:00Z", "2030-01-01T00:00:00.1234567890Z", "2030-1-01T00:00:00Z"])
def test_valid_until_that_is_not_rfc_3339_is_refused(node: ServedNode, text: str):
    with node.client() as c:
        res = c.post(FACTS, json=body("stigmem://t/bad", valid_until=text))
    assert res.status_code == 422, res.text
    assert res.json()["error"] == "invalid_fact" and res.json()["field"] == "valid_until"


def test_a_peer_receives_valid_until_as_given_and_filters_by_its_instant(pair: tuple[ServedNode, ServedNode]):
    a, b = pair
    federate(a, b)
    t = uuid.uuid4().hex[:8]
    west = at(3600, -12)  # unexpired, but its text sorts before now
    given = ["2030-01-01T01:00:00+01:00", west, "2030-01-01T00:00:00.5Z"]
    stored = post(a, [body(f"stigmem://t/{t}/{i}", valid_until=vu) for i, vu in enumerate(given)])
    code, summary = pull(b)
    assert code == 0, summary
    got = {f["id"]: f for f in get(b, limit=500)["facts"]}
    for vu, s in zip(given, stored):
        assert got[s["id"]]["valid_until"] == vu and got[s["id"]]["received_from"] == a.well_known()["node_id"]
    assert b.sql("SELECT COUNT(*) FROM audit_log WHERE event_type LIKE '%reject%'") == [(0,)]
    assert get(b)["total"] == 3


# --------------------------------------------------------------------------- well-known


def test_well_known_carries_the_reference_fields_namespaces_and_source_attestation(node: ServedNode):
    wk = node.well_known()
    assert wk["namespaces"] == [] and wk["source_attestation"] == "off"
