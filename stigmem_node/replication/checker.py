"""Checking pulled pages: in worker processes on the other cores, or in a thread here.

A ``PageChecker`` gives ``page_check.check_page`` of a page under a peer's policy and keys.
``InlineChecker`` runs it in a thread of this process.  ``ProcessChecker`` hands each page,
as the bytes the peer sent, to one of ``workers`` worker processes
(``stigmem_node.check_worker``), each started at first use and kept for the node's life, so
that the subscriber fetches and stores other pages while pages are checked on other cores.
Both give the same checked page (the same code runs).  A worker found dead before a page is
started again; one that cannot be started, fails a page or does not answer it within
``WORKER_TIMEOUT_S`` is stopped, and that page and every later one are checked here (the node
says so once in its log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Protocol

from stigmem_node.check_worker import decode_answer, encode_request
from stigmem_node.page_check import CheckedPage, PagePolicy, check_page
from stigmem_node.replication.transport import Page

log = logging.getLogger("stigmem_node.replication")

# A page is at most a few MB (about 50 ms of work for 500 facts): a worker silent for this
# long is stuck, and is stopped.
WORKER_TIMEOUT_S = 30.0


class PageChecker(Protocol):
    async def check(self, policy: PagePolicy, keys: list[bytes], page: Page) -> CheckedPage:
        """``page``'s facts checked under ``policy`` and ``keys`` (raw public keys)."""
        ...

    @property
    def parallel(self) -> int:
        """How many pages it checks at once."""
        ...

    def warm(self) -> None:
        """Get ready for a page soon (start what takes time to start); never blocks long."""
        ...


def check_here(policy: PagePolicy, keys: list[bytes], page: Page) -> CheckedPage:
    """``page`` checked in this thread (parsing it too: run it off the event loop)."""
    return check_page(policy, page.facts, keys)


class InlineChecker:
    """Checks every page in a thread of this process."""

    parallel = 1

    async def check(self, policy: PagePolicy, keys: list[bytes], page: Page) -> CheckedPage:
        return await asyncio.to_thread(check_here, policy, keys, page)

    def warm(self) -> None:
        return None

    def close(self) -> None:
        return None


class WorkerFailed(Exception):
    """The worker process is gone or answered something else than asked."""


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


class _Worker:
    """One worker process, used by one thread at a time."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None

    def started(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            try:
                self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [self.python, "-m", "stigmem_node.check_worker"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            except OSError as exc:
                raise WorkerFailed(f"cannot start it: {exc}") from None
        return self.proc

    def round_trip(self, request: bytes, timeout_s: float) -> CheckedPage:
        proc = self.started()
        assert proc.stdin is not None and proc.stdout is not None  # noqa: S101 - pipes asked for
        try:
            proc.stdin.write(request)
            proc.stdin.flush()
            deadline = time.monotonic() + timeout_s
            head = _read(proc.stdout, 4, deadline)
            size = int.from_bytes(head, "big") if len(head) == 4 else -1
            answer = _read(proc.stdout, size, deadline) if size >= 0 else b""
        except (OSError, TimeoutError) as exc:
            self.stop(kill=isinstance(exc, TimeoutError))
            raise WorkerFailed(str(exc) or type(exc).__name__) from None
        if len(answer) != size:
            self.stop()
            raise WorkerFailed("the worker ended or answered out of turn")
        try:
            return decode_answer(answer)
        except Exception as exc:  # noqa: BLE001 - whatever it sent, it is given up
            self.stop()
            raise WorkerFailed(f"the worker's answer does not decode ({type(exc).__name__})") from None

    def stop(self, *, kill: bool = False) -> None:
        """End the worker: it ends when its input does; a stuck one (``kill``), at once."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
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


class ProcessChecker:
    """Checks pages in ``workers`` worker processes at once, falling back to a thread."""

    def __init__(self, workers: int = 2, python: str = sys.executable, *,
                 timeout_s: float = WORKER_TIMEOUT_S) -> None:
        """``timeout_s``: how long a page may take before its worker is given up for stuck."""
        self.parallel = max(1, workers)
        self.timeout_s = timeout_s
        self._workers = [_Worker(python) for _ in range(self.parallel)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._workers:
            self._idle.put(worker)
        # One thread a worker: a page waits here for a free worker, costing no thread.
        self._threads = ThreadPoolExecutor(self.parallel, thread_name_prefix="stigmem-check")
        self._lock = threading.Lock()
        self._broken = False
        self._closed = False
        self.pages = 0  # pages the workers checked (tests look)

    async def check(self, policy: PagePolicy, keys: list[bytes], page: Page) -> CheckedPage:
        if not self._broken and not self._closed:
            try:
                checked = await asyncio.get_running_loop().run_in_executor(
                    self._threads, self._round_trip, encode_request(policy, keys, page.raw))
            except (WorkerFailed, RuntimeError) as exc:  # RuntimeError: closed meanwhile
                if not self._closed and not self._broken:
                    self._broken = True
                    log.warning("check worker unavailable (%s); checking pulled pages in this process", exc)
            else:
                self._log_internal_errors(checked)
                return checked
        return await asyncio.to_thread(check_here, policy, keys, page)

    def warm(self) -> None:
        """Start the idle workers now, so that they are up by the first page (unless broken or closed)."""
        with self._lock:
            if self._broken or self._closed:
                return
            for _ in range(self.parallel):
                try:
                    worker = self._idle.get_nowait()
                except queue.Empty:
                    break
                try:
                    worker.started()
                except WorkerFailed:
                    pass  # the first page finds it out, and says so
                finally:
                    self._idle.put(worker)

    def _round_trip(self, request: bytes) -> CheckedPage:
        worker = self._idle.get()  # one thread a worker: never waits
        try:
            if self._closed:
                raise WorkerFailed("the checker is closed")
            checked = worker.round_trip(request, self.timeout_s)
            self.pages += 1
            return checked
        finally:
            self._idle.put(worker)

    @staticmethod
    def _log_internal_errors(checked: CheckedPage) -> None:
        """A check that failed in a worker (a bug, logged there where nobody reads it): say so here."""
        for fact_id, exc in checked.rejections:
            if exc.code == "internal_validation_error":
                log.error("a pulled fact (%s) could not be validated in the check worker: %s (field %s)",
                          (fact_id or "-")[:64], exc.message, getattr(exc, "field", None) or "-")

    def close(self) -> None:
        """Stop the workers (each ends when its input does); later pages are checked here."""
        with self._lock:
            self._closed = True
        self._threads.shutdown(wait=True)
        for worker in self._workers:
            worker.stop()
