"""Signing many messages at once, on every core this process may run on.

Every fact the node asserts carries an Ed25519 origin signature, and signing is the largest
single cost of an assert (about a third of its CPU time).  libsodium (through PyNaCl's cffi
binding) releases the GIL while it signs, so threads sign in parallel: ``SigningPool``
splits a batch's messages into one share per usable core and hands all but the first to its
threads at once (``start``); the caller does what needs no signature meanwhile (an assert
builds its facts' texts), then signs the first share and collects the signatures in order.

The private key never leaves the process: the threads call the same ``Signer``.  The
usable cores are the process's CPU affinity (``taskset``, a container's cpuset), not the
machine's count: a node pinned to one core gets no extra thread, and signs as before.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from stigmem_node.keys import Signer

__all__ = ["MAX_SIGNING_THREADS", "MIN_SHARE", "SignLater", "SigningPool", "sign_serially", "sign_when_asked",
           "usable_cores"]

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


#: Starts signing messages and returns what gives their signatures, in order
#: (``SigningPool.start``, or ``sign_when_asked``).
SignLater = Callable[[Signer, Sequence[bytes]], Callable[[], list[bytes]]]


def sign_serially(signer: Signer, messages: Sequence[bytes]) -> list[bytes]:
    """Every message's signature, one after another in the calling thread."""
    sign = signer.sign
    return [sign(m) for m in messages]


def sign_when_asked(signer: Signer, messages: Sequence[bytes]) -> Callable[[], list[bytes]]:
    """A ``SignLater`` without threads: everything is signed in the calling thread when asked."""
    return functools.partial(sign_serially, signer, messages)


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

    def start(self, signer: Signer, messages: Sequence[bytes]) -> Callable[[], list[bytes]]:
        """Hand the pool's shares of ``messages`` to its threads now; the function returned
        signs the caller's share and gives every signature, in order.  What the caller does
        in between (work that needs no signature) overlaps with the threads' signing."""
        pool = self._pool
        shares = min(self.threads + 1, len(messages) // MIN_SHARE)
        if pool is None or shares < 2:
            return sign_when_asked(signer, messages)
        own = len(messages) // shares
        size = -(-(len(messages) - own) // (shares - 1))
        parts = [messages[i:i + size] for i in range(own, len(messages), size)]
        futures = [pool.submit(sign_serially, signer, part) for part in parts]

        def finish() -> list[bytes]:
            out = sign_serially(signer, messages[:own])
            for future in futures:
                out.extend(future.result())
            return out

        return finish

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
