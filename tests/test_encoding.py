"""Canonical JSON: the fast path gives the same bytes as the general RFC 8785 encoder."""

from hypothesis import given, settings
from hypothesis import strategies as st

from stigmem_node import encoding
from stigmem_node.encoding import b64url_decode, b64url_encode, jcs


def general(obj) -> bytes:
    out: list[str] = []
    encoding._jcs(obj, out)
    return "".join(out).encode("utf-8")


values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**60), max_value=2**60) | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(values)
def test_jcs_fast_path_matches_the_general_encoder(obj):
    assert jcs(obj) == general(obj)


def test_jcs_known_answers():
    assert jcs({"b": [1, "é", None], "a": True}) == '{"a":true,"b":[1,"é",null]}'.encode()
    assert jcs({"n": 1.0, "m": 1e21, "s": "\u001f"}) == b'{"m":1e+21,"n":1,"s":"\\u001f"}'
    # Keys are ordered by UTF-16 code units: U+E000 sorts after the surrogate pair of U+1F600.
    assert jcs({"\ue000": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ue000":1}'.encode()


def test_b64url_round_trip_and_strictness():
    for raw in (b"", b"\x00", b"\xff\xfe", bytes(range(40))):
        assert b64url_decode(b64url_encode(raw)) == raw
    for bad in ("a", "a$", "ab=c"):
        try:
            b64url_decode(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
