"""Checking a page's origin signatures: in this process, or in a worker process on another core.

``Ingest.prepare_page`` turns each fact that passed every other check into the bytes its
signature covers; a ``Verifier`` says which of them verify under the peer's keys;
``Ingest.finish_page`` turns the verdicts into the checked page.  ``InlineVerifier`` checks
them in a thread of this process.  ``ProcessVerifier`` sends each batch to one worker process
(``stigmem_node.verify_worker``), started at first use and kept for the node's life, so that
the subscriber prepares and stores other pages while the signatures are checked.  Both give
the same verdicts (the same libsodium check); if the worker cannot be started or dies, the
batch and every later one are checked inline, and the node says so once in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import threading
from typing import Protocol

from stigmem_node.verify_worker import encode_request, verify_batch

log = logging.getLogger("stigmem_node.replication")


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

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
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
                head = proc.stdout.read(4)
                answer = proc.stdout.read(int.from_bytes(head, "big")) if len(head) == 4 else b""
            except OSError as exc:
                self._stop(proc)
                raise WorkerFailed(str(exc)) from None
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

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
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
