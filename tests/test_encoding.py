"""Canonical JSON (RFC 8785) and base64url.

``encoding.jcs`` is RFC 8785 for values without numbers and refuses numbers: checked
against the maintained ``rfc8785`` package over random values (floats included) and
against the RFC's own examples.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from stigmem_node import encoding
from stigmem_node.encoding import b64url_decode, b64url_encode, jcs


def general(obj: Any) -> bytes:
    out: list[str] = []
    encoding._jcs(obj, out)
    return "".join(out).encode("utf-8")


def has_number(obj: Any) -> bool:
    if isinstance(obj, bool):
        return False
    if isinstance(obj, (int, float)):
        return True
    if isinstance(obj, (list, tuple)):
        return any(has_number(x) for x in obj)
    if isinstance(obj, dict):
        return any(has_number(x) for x in obj.values())
    return False


# Keys and strings from all of Unicode but surrogates: ASCII, BMP (incl. U+E000-U+FFFF,
# which sort after the surrogate pairs of astral characters in UTF-16) and astral planes.
keys = st.text(max_size=6) | st.sampled_from(["\ue000", "\U0001f600", "\ufb33", "\u20ac", "\r", "1", "\u0080"])
values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**60), max_value=2**60) | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4), max_leaves=20)
number_free = st.recursive(
    st.none() | st.booleans() | st.text(max_size=12),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(values)
def test_jcs_fast_path_matches_the_general_encoder(obj: Any) -> None:
    if has_number(obj):
        for encode in (jcs, general):
            with pytest.raises(TypeError):
                encode(obj)
    else:
        assert jcs(obj) == general(obj)


@settings(max_examples=1000, deadline=None)
@given(values)
def test_jcs_is_rfc8785_or_refuses_numbers(obj: Any) -> None:
    """Differential test against the rfc8785 package, floats included: whatever ``jcs``
    encodes, it encodes exactly as RFC 8785; a value with a number it refuses."""
    if has_number(obj):
        with pytest.raises(TypeError):
            jcs(obj)
    else:
        assert jcs(obj) == rfc8785.dumps(obj)


@settings(max_examples=1000, deadline=None)
@given(number_free)
def test_jcs_equals_rfc8785_on_number_free_values(obj: Any) -> None:
    assert jcs(obj) == rfc8785.dumps(obj)


@pytest.mark.parametrize("number", [0, -1, 2**53, 1.0, -0.0, 1e-06, 1e21, 0.1, 5e-324])
def test_numbers_are_refused_wherever_they_are(number: Any) -> None:
    for obj in (number, [number], {"a": number}, {"\u00e9": ["x", {"b": number}]}):
        with pytest.raises(TypeError):
            jcs(obj)


def test_jcs_known_answers() -> None:
    assert jcs({"b": ["x", "é", None], "a": True}) == '{"a":true,"b":["x","é",null]}'.encode()
    assert jcs({"s": "\u001f", "t": "\u007f\u2028"}) == '{"s":"\\u001f","t":"\u007f\u2028"}'.encode()
    # Keys are ordered by UTF-16 code units: U+E000 sorts after the surrogate pair of U+1F600.
    assert jcs({"\ue000": None, "\U0001f600": False}) == '{"\U0001f600":false,"\ue000":null}'.encode()
    for bad in ("\ud800", {"\udfff": None}, ["a", "\ud83d"]):  # lone surrogates: not Unicode
        with pytest.raises(ValueError):
            jcs(bad)
    with pytest.raises(TypeError):
        jcs({1: "x"})


def test_rfc8785_sorting_example() -> None:
    """RFC 8785 §3.2.3: property sorting by UTF-16 code units."""
    obj = {
        "\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One",
        "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = ('{"\\r":"Carriage Return","1":"One","\u0080":"Control","ö":"Latin Small Letter O With Diaeresis",'
                '"€":"Euro Sign","😀":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}').encode()
    assert jcs(obj) == expected == rfc8785.dumps(obj)


def test_rfc8785_string_and_literal_example() -> None:
    """RFC 8785 §3.2.4 (the string and literals of its example; its numbers are below)."""
    obj = {"string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"/", "literals": [None, True, False]}
    expected = '{"literals":[null,true,false],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'.encode()
    assert jcs(obj) == expected == rfc8785.dumps(obj)
    numbers = [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001]
    assert rfc8785.dumps(numbers) == b"[333333333.3333333,1e+30,4.5,0.002,1e-27]"
    with pytest.raises(TypeError):
        jcs({**obj, "numbers": numbers})


# RFC 8785 Appendix B: IEEE 754 double (hex) -> its JSON text.
APPENDIX_B = [
    ("0000000000000000", "0"), ("8000000000000000", "0"), ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"), ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"), ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"), ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"), ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"), ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"), ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"), ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"), ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"), ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"), ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize("ieee,text", APPENDIX_B)
def test_rfc8785_appendix_b_numbers(ieee: str, text: str) -> None:
    """The RFC's number samples: the reference implementation writes them as the RFC says
    (``1e-06`` -> ``0.000001``, ``1e21`` -> ``1e+21``, ``-0`` -> ``0``); ``jcs`` refuses
    them rather than risk a text the reference node's ``canonicaljson`` would not write."""
    x = struct.unpack(">d", bytes.fromhex(ieee))[0]
    assert rfc8785.dumps(x) == text.encode()
    with pytest.raises(TypeError):
        jcs(x)
    with pytest.raises(TypeError):
        jcs({"v": x})


def test_b64url_round_trip_and_strictness() -> None:
    for raw in (b"", b"\x00", b"\xff\xfe", bytes(range(40))):
        assert b64url_decode(b64url_encode(raw)) == raw
    for bad in ("a", "a$", "ab=c"):
        try:
            b64url_decode(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
