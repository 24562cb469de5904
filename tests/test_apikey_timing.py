"""A 401 does the same work whether or not the key id exists (issue 8.14).

A 401 for a known key id used to take ~14 µs longer than for an unknown one (a real
pepper HMAC and the expiry checks ran only for known ids), which told an attacker which
ids exist.  Timing is measured in bench/apikey_timing.py; this test checks the cause
deterministically: every failing key, known id or not, hashes with the real pepper once,
compares once in constant time and reads the clock once, on a real node database.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest

from stigmem_node import apikeys as apikeys_mod
from stigmem_node.apikeys import PERMISSIONS
from stigmem_node.clock import Clock
from stigmem_node.errors import Unauthorized
from stigmem_node.node import Node


class CountingClock(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def now(self):
        self.calls += 1
        return super().now()


class CountingPeppers(dict):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.reads = 0

    def __getitem__(self, version):
        self.reads += 1
        return super().__getitem__(version)


def test_a_401_does_the_same_work_for_known_and_unknown_key_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 engine):
    node = Node(engine.settings(tmp_path / "n.db"), serving=True)
    key, rec = node.apikeys.create(PERMISSIONS)
    secret = key.split("_", 2)[2]  # stgm_<id>_<secret>; the secret may hold "_"
    wrong_secret = f"stgm_{rec.id}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"
    unknown_id = f"stgm_{'0' * 12 if rec.id != '0' * 12 else '1' * 12}_{secret}"

    clock = CountingClock()
    node.apikeys.clock = clock
    peppers = CountingPeppers(node.apikeys.peppers.versions)
    node.apikeys.peppers.versions = peppers
    compares: list[int] = []
    real_compare = hmac.compare_digest
    monkeypatch.setattr(apikeys_mod.hmac, "compare_digest", lambda a, b: compares.append(1) or real_compare(a, b))

    work = {}
    for name, candidate in (("known id", wrong_secret), ("unknown id", unknown_id), ("malformed", "stgm_nope"),
                            ("empty", None)):
        clock.calls = peppers.reads = 0
        compares.clear()
        with pytest.raises(Unauthorized):
            node.apikeys.authenticate(candidate)
        work[name] = (clock.calls, peppers.reads, len(compares))
    assert work["known id"] == (1, 1, 1)
    assert set(work.values()) == {work["known id"]}, work
    # And the right key still works.
    assert node.apikeys.authenticate(key).key_id == rec.id
    node.close()
