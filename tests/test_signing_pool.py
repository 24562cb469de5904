"""Signing a batch on several threads (``stigmem_node.signing``): the same signatures, in
order, as one thread gives; the work really shared; failures surfacing; the threads sized by
the process's CPU affinity."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node.keys import KeySigner
from stigmem_node.signing import (
    MAX_SIGNING_THREADS,
    MIN_SHARE,
    SigningPool,
    sign_serially,
    sign_when_asked,
    usable_cores,
)


class RecordingSigner:
    """A real signer that notes which thread made each signature, and fails on one message."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self._signer = KeySigner(Ed25519PrivateKey.generate())
        self.key_id, self.public_key = self._signer.key_id, self._signer.public_key
        self.threads: list[str] = []
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def sign(self, message: bytes, /) -> bytes:
        if message == self.fail_on:
            raise ValueError("refused")
        with self._lock:
            self.threads.append(threading.current_thread().name)
        return self._signer.sign(message)


def _messages(n: int) -> list[bytes]:
    return [os.urandom(40 + i % 300) for i in range(n)]


@pytest.mark.parametrize("threads", [0, 1, 3])
@pytest.mark.parametrize("n", [0, 1, MIN_SHARE - 1, 2 * MIN_SHARE - 1, 2 * MIN_SHARE, 2 * MIN_SHARE + 1, 101, 500])
def test_a_pool_gives_the_serial_signatures_in_order(threads: int, n: int) -> None:
    private = Ed25519PrivateKey.generate()
    signer = KeySigner(private)
    messages = _messages(n)
    pool = SigningPool(threads)
    try:
        sigs = pool.start(signer, messages)()
    finally:
        pool.close()
    assert sigs == sign_serially(signer, messages)
    for message, sig in zip(messages, sigs, strict=True):
        private.public_key().verify(sig, message)  # raises if wrong


def test_a_large_batch_is_shared_between_the_caller_and_every_thread() -> None:
    signer = RecordingSigner()
    pool = SigningPool(3)
    try:
        pool.start(signer, _messages(400))()
    finally:
        pool.close()
    # Four shares: the caller signs one, the pool's threads the three others (a thread that is
    # done with one share may take the next: which thread signs which is the executor's call).
    caller = threading.current_thread().name
    assert signer.threads.count(caller) == 100
    assert sum(n.startswith("stigmem-sign") for n in signer.threads) == 300


def test_a_small_batch_is_signed_by_the_caller_alone() -> None:
    signer = RecordingSigner()
    pool = SigningPool(3)
    try:
        pool.start(signer, _messages(2 * MIN_SHARE - 1))()
    finally:
        pool.close()
    assert set(signer.threads) == {threading.current_thread().name}


def test_a_failure_in_a_threads_share_reaches_the_caller_and_the_pool_keeps_working() -> None:
    messages = _messages(200)
    signer = RecordingSigner(fail_on=messages[-1])  # in the last share: a pool thread's
    pool = SigningPool(1)
    try:
        with pytest.raises(ValueError, match="refused"):
            pool.start(signer, messages)()
        signer.fail_on = None
        assert pool.start(signer, messages)() == sign_serially(signer, messages)
    finally:
        pool.close()


def test_threads_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="at least 0"):
        SigningPool(-1)


def test_the_pool_of_this_process_has_a_thread_per_usable_core_beyond_the_first() -> None:
    pool = SigningPool.for_this_process()
    try:
        assert pool.threads == min(usable_cores() - 1, MAX_SIGNING_THREADS)
    finally:
        pool.close()
    assert usable_cores() == len(os.sched_getaffinity(0))


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and two usable cores")
def test_a_node_pinned_to_one_core_starts_no_signing_thread_and_no_check_worker(tmp_path: Path) -> None:
    core = min(os.sched_getaffinity(0))
    code = ("import sys; from pathlib import Path; from stigmem_node.config import Settings; "
            "from stigmem_node.node import Node; "
            "node = Node(Settings(db_path=Path(sys.argv[1])), create=True); "
            "print(node.signing.threads, type(node.checker).__name__); node.close()")
    out = subprocess.run(["taskset", "-c", str(core), sys.executable, "-c", code, str(tmp_path / "pinned.db")],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["0", "InlineChecker"]


def test_start_hands_the_threads_their_shares_before_the_caller_asks_for_the_signatures() -> None:
    signer = RecordingSigner()
    pool = SigningPool(1)
    messages = _messages(200)
    try:
        finish = pool.start(signer, messages)
        # Nothing asked yet: the pool's thread is already signing its share (the caller's
        # work in between overlaps with it).
        for _ in range(600):  # a failsafe of 30 s, not a bound on anything measured
            if any(n.startswith("stigmem-sign") for n in signer.threads):
                break
            time.sleep(0.05)
        assert any(n.startswith("stigmem-sign") for n in signer.threads)
        assert threading.current_thread().name not in signer.threads
        assert finish() == sign_serially(signer, messages)
    finally:
        pool.close()


def test_without_threads_start_signs_only_when_asked() -> None:
    signer = RecordingSigner()
    messages = _messages(100)
    finish = sign_when_asked(signer, messages)
    assert signer.threads == []
    assert finish() == sign_serially(signer, messages)
    pool = SigningPool(0)
    try:
        finish = pool.start(signer, messages)
        assert len(signer.threads) == 200  # the two calls above, nothing more yet
        assert finish() == sign_serially(signer, messages)
    finally:
        pool.close()
