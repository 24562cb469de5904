"""Signing many messages at once, on every core this process may run on.

Every fact the node asserts carries an Ed25519 origin signature, and signing is the largest
single cost of an assert (about a third of its CPU time).  libsodium (through PyNaCl's cffi
binding) releases the GIL while it signs, so threads sign in parallel: ``SigningPool``
splits a batch's messages into one share per usable core, signs one share in the calling
thread and the others in its own threads, and returns the signatures in order.

The private key never leaves the process: the threads call the same ``Signer``.  The
usable cores are the process's CPU affinity (``taskset``, a container's cpuset), not the
machine's count: a node pinned to one core gets no extra thread, and signs as before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from stigmem_node.keys import Signer

__all__ = ["MAX_SIGNING_THREADS", "MIN_SHARE", "SigningPool", "sign_serially", "usable_cores"]

#: At most this many threads besides the caller's (more cores add little: the rest of an
#: assert is serial).
MAX_SIGNING_THREADS = 3
#: A share smaller than this is signed by the caller: handing it to a thread costs more
#: than it saves.
MIN_SHARE = 16


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on this system
        return os.cpu_count() or 1


def sign_serially(signer: Signer, messages: Sequence[bytes]) -> list[bytes]:
    """Every message's signature, one after another in the calling thread."""
    sign = signer.sign
    return [sign(m) for m in messages]


class SigningPool:
    """Signs a batch of messages with ``threads`` threads besides the caller's."""

    def __init__(self, threads: int) -> None:
        if threads < 0:
            raise ValueError("threads must be at least 0")
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="stigmem-sign") if threads else None

    @classmethod
    def for_this_process(cls) -> SigningPool:
        """One thread per usable core beyond the first, at most ``MAX_SIGNING_THREADS``."""
        return cls(min(usable_cores() - 1, MAX_SIGNING_THREADS))

    def sign_all(self, signer: Signer, messages: Sequence[bytes]) -> list[bytes]:
        """The signatures of ``messages`` by ``signer``, in order."""
        pool = self._pool
        shares = min(self.threads + 1, len(messages) // MIN_SHARE)
        if pool is None or shares < 2:
            return sign_serially(signer, messages)
        size = -(-len(messages) // shares)
        parts = [messages[i:i + size] for i in range(0, len(messages), size)]
        futures = [pool.submit(sign_serially, signer, part) for part in parts[1:]]
        out = sign_serially(signer, parts[0])
        for future in futures:
            out.extend(future.result())
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
