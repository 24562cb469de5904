"""Checking a page's origin signatures: in this process, or in a worker process on another core.

``Ingest.prepare_page`` turns each fact that passed every other check into the bytes its
signature covers; a ``Verifier`` says which of them verify under the peer's keys;
``Ingest.finish_page`` turns the verdicts into the checked page.  ``InlineVerifier`` checks
them in a thread of this process.  ``ProcessVerifier`` sends each batch to one worker process
(``stigmem_node.verify_worker``), started at first use and kept for the node's life, so that
the subscriber prepares and stores other pages while the signatures are checked.  Both give
the same verdicts (the same libsodium check).  A worker found dead before a batch is started
again; one that cannot be started, fails a batch or does not answer it within
``WORKER_TIMEOUT_S`` is stopped, and that batch and every later one are checked inline (the
node says so once in its log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import subprocess
import sys
import threading
import time
from typing import IO, Protocol

from stigmem_node.verify_worker import encode_request, verify_batch

log = logging.getLogger("stigmem_node.replication")

# A batch is at most a page (500 signatures, about 25 ms of work): a worker silent for this
# long is stuck, and is stopped.
WORKER_TIMEOUT_S = 30.0


def _read(stream: IO[bytes], size: int, deadline: float) -> bytes:
    """Up to ``size`` bytes from the worker's pipe (fewer only at its end), waiting no later
    than ``deadline`` (``TimeoutError``)."""
    fd, data = stream.fileno(), bytearray()
    while len(data) < size:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError("the worker did not answer in time")
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


class Verifier(Protocol):
    async def verify(self, keys: list[bytes], items: list[bytes]) -> bytes:
        """One byte per item: 1 if it verifies under any of ``keys`` (raw public keys)."""
        ...

    def warm(self) -> None:
        """Get ready for a batch soon (start what takes time to start); never blocks long."""
        ...


class InlineVerifier:
    """Checks every batch in a thread of this process."""

    async def verify(self, keys: list[bytes], items: list[bytes]) -> bytes:
        return await asyncio.to_thread(verify_batch, keys, items)

    def warm(self) -> None:
        return None

    def close(self) -> None:
        return None


class WorkerFailed(Exception):
    """The worker process is gone or answered something else than asked."""


class ProcessVerifier:
    """Checks batches in one worker process (one batch at a time), falling back to a thread."""

    def __init__(self, python: str = sys.executable, *, timeout_s: float = WORKER_TIMEOUT_S) -> None:
        """``timeout_s``: how long a batch may take before the worker is given up for stuck."""
        self.python = python
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._broken = False
        self._closed = False
        self.batches = 0  # batches the worker checked (tests look)

    async def verify(self, keys: list[bytes], items: list[bytes]) -> bytes:
        if not items:
            return b""
        if not self._broken:
            try:
                return await asyncio.to_thread(self._round_trip, keys, items)
            except WorkerFailed as exc:
                self._broken = True
                log.warning("signature worker unavailable (%s); checking signatures in this process", exc)
        return await asyncio.to_thread(verify_batch, keys, items)

    def warm(self) -> None:
        """Start the worker now, so that it is up by the first batch (unless it is busy,
        broken or closed)."""
        if self._broken or not self._lock.acquire(blocking=False):
            return
        try:
            self._started()
        except WorkerFailed:
            pass  # the first batch finds it out, and says so
        finally:
            self._lock.release()

    def _round_trip(self, keys: list[bytes], items: list[bytes]) -> bytes:
        request = encode_request(keys, items)
        with self._lock:
            proc = self._started()
            assert proc.stdin is not None and proc.stdout is not None  # noqa: S101 - pipes asked for
            try:
                proc.stdin.write(request)
                proc.stdin.flush()
                deadline = time.monotonic() + self.timeout_s
                head = _read(proc.stdout, 4, deadline)
                answer = _read(proc.stdout, int.from_bytes(head, "big"), deadline) if len(head) == 4 else b""
            except (OSError, TimeoutError) as exc:
                self._stop(proc, kill=isinstance(exc, TimeoutError))
                raise WorkerFailed(str(exc) or type(exc).__name__) from None
            if len(head) != 4 or int.from_bytes(head, "big") != len(items) or len(answer) != len(items):
                self._stop(proc)
                raise WorkerFailed("the worker ended or answered out of turn")
            self.batches += 1
            return answer

    def _started(self) -> subprocess.Popen[bytes]:
        if self._closed:
            raise WorkerFailed("the verifier is closed")
        if self._proc is None or self._proc.poll() is not None:
            try:
                self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [self.python, "-m", "stigmem_node.verify_worker"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            except OSError as exc:
                raise WorkerFailed(f"cannot start it: {exc}") from None
        return self._proc

    def _stop(self, proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
        """End the worker: it ends when its input does; a stuck one (``kill``), at once."""
        if kill:
            proc.kill()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):  # a dead worker cannot take what is unflushed
                    stream.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._proc is proc:
            self._proc = None

    def close(self) -> None:
        """Stop the worker (it ends when its input does); later batches are checked inline."""
        with self._lock:
            self._closed = True
            if self._proc is not None:
                self._stop(self._proc)
