"""How much longer a 401 takes for a known API-key id than for an unknown one.

Both keys are wrong; one names an existing key id, the other an id that does not exist.
A difference would tell an attacker which key ids exist.  Interleaved rounds of each, on
a real node database; prints the medians and their ratio (1.00 is the goal), plus a
malformed key for comparison.

    .venv/bin/python bench/apikey_timing.py [--rounds 200000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stigmem_node.config import Settings
from stigmem_node.errors import Unauthorized
from stigmem_node.node import Node
from stigmem_node.vocabulary import PERMISSIONS


def per_call_ns(authenticate, key: str, batch: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(batch):
        try:
            authenticate(key)
        except Unauthorized:
            pass
        else:
            raise SystemExit("a wrong key was accepted")
    return (time.perf_counter_ns() - start) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node = Node(Settings(db_path=Path(tmp) / "n.db"), serving=True)
        key, rec = node.apikeys.create(PERMISSIONS)
        secret = key.rsplit("_", 1)[1]
        wrong = "A" if secret[0] != "A" else "B"
        known = f"stgm_{rec.id}_{wrong}{secret[1:]}"
        unknown = f"stgm_{'0' * 12 if rec.id != '0' * 12 else '1' * 12}_{secret}"
        malformed = "not-a-key-" + secret
        batch = 500
        samples: dict[str, list[float]] = {"known id": [], "unknown id": [], "malformed": []}
        for _ in range(max(1, args.rounds // batch)):
            for name, k in (("known id", known), ("unknown id", unknown), ("malformed", malformed)):
                samples[name].append(per_call_ns(node.apikeys.authenticate, k, batch))
        med = {name: statistics.median(v) for name, v in samples.items()}
        for name, value in med.items():
            print(f"{name:11s} {value / 1000:7.2f} µs per 401")
        print(f"known/unknown ratio: {med['known id'] / med['unknown id']:.3f} "
              f"(difference {(med['known id'] - med['unknown id']) / 1000:+.2f} µs)")
        node.close()


if __name__ == "__main__":
    main()
