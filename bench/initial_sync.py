"""An initial sync of N facts (default 1,000,000) from one peer: peak RSS, facts/s, progress,
and resume after ``kill -9``.

Node A holds N facts (company and public); node B, empty, has A registered and approved (and
A has B).  B pulls with ``stigmem-node pull`` in a subprocess, as a cron job would.  While it
runs the bench prints a progress line every few seconds (facts stored, facts/s, RSS), reading
B's counters from its database; at the end it prints facts/s and the puller's peak RSS
(``VmHWM`` from /proc/<pid>/status, sampled, and ``ru_maxrss`` from ``wait4``; the larger one),
and its check worker processes' RSS together (sampled).

Loading A takes a while (every fact is asserted through the API and signed): the loaded A is
cached in ``$TMPDIR/stigmem-bench-initial-sync/<N>/`` and copied for each run (``--fresh``
rebuilds it).

``--kills K``: before the pull that runs to its end, start the puller K times and ``kill -9``
it at a random point each time (after a random number of facts of its own, anywhere in the
next page: fetch, check or commit).  After each kill the facts stored and B's counters must
agree; at the end every fact of A must be on B exactly once (count, distinct ids, none
missing), and the cursor must be A's last.

    python bench/initial_sync.py [--facts 1000000] [--kills 0] [--seed S] [--fresh] [--check-workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Node, insert_ceiling, peer_up
from pull import load_facts

PROGRESS_EVERY_S = 5.0
SAMPLE_EVERY_S = 0.05
CEILING_ROWS = 100_000  # the insert ceiling is measured on at most this many of the rows
MIB = 1024 * 1024


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the puller's check workers), whichever of its threads
    started them."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(c) for c in fh.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def proc_status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


# -- loading A (cached) ----------------------------------------------------------------------------
def load(node: Node, n: int) -> None:
    t0 = time.perf_counter()
    last = [t0]

    def progress(done: int) -> None:
        if time.perf_counter() - last[0] > PROGRESS_EVERY_S:
            last[0] = time.perf_counter()
            print(f"  loading A: {done:,}/{n:,} facts ({done / (last[0] - t0):,.0f}/s)", flush=True)

    load_facts(node, n, progress)


def cached_a(n: int, fresh: bool) -> tuple[Path, dict]:
    """The directory of a stopped node A holding ``n`` facts, and its meta (API key)."""
    cache = Path(tempfile.gettempdir()) / "stigmem-bench-initial-sync" / str(n)
    meta_file = cache / "meta.json"
    if meta_file.exists() and not fresh:
        return cache, json.loads(meta_file.read_text())
    shutil.rmtree(cache, ignore_errors=True)
    print(f"loading {n:,} facts into A (cached in {cache} for the next runs)", flush=True)
    a = Node(cache, "a")
    try:
        load(a, n)
        meta = {"api_key": a.api_key, "facts": n}
    finally:
        a.stop()
    meta_file.write_text(json.dumps(meta))
    return cache, meta


# -- the puller ------------------------------------------------------------------------------------
def pull_cmd(b: Path) -> list[str]:
    return [sys.executable, "-m", "stigmem_node", "pull", "--json", "--db", str(b)]


def counters(conn: sqlite3.Connection) -> tuple[int, str | None]:
    row = conn.execute("SELECT facts_ingested, cursor FROM replication_state").fetchone()
    return (row[0], row[1]) if row else (0, None)


class Run:
    """One ``stigmem-node pull`` process, sampled until it exits (or is killed)."""

    def __init__(self, b_db: Path, env: dict[str, str], watch: sqlite3.Connection, total: int) -> None:
        self.proc = subprocess.Popen(pull_cmd(b_db), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.watch, self.total = watch, total
        self.start = time.monotonic()
        self.start_count = counters(watch)[0]
        self.hwm_kib = 0
        self.rss_kib = 0
        self.maxrss_kib = 0
        self.workers_kib = 0  # the check workers' RSS together, the highest sampled
        self.exit: int | None = None

    def sample(self) -> None:
        self.hwm_kib = max(self.hwm_kib, proc_status_kib(self.proc.pid, "VmHWM"))
        self.rss_kib = proc_status_kib(self.proc.pid, "VmRSS") or self.rss_kib
        self.workers_kib = max(self.workers_kib,
                               sum(proc_status_kib(c, "VmRSS") for c in children(self.proc.pid)))

    def reap(self, block: bool = True) -> bool:
        """Reap the puller with ``wait4`` (its ``ru_maxrss`` with it); False if it still runs."""
        pid, status, usage = os.wait4(self.proc.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        self.proc.returncode = self.exit = os.waitstatus_to_exitcode(status)
        self.maxrss_kib = usage.ru_maxrss
        return True

    def run(self, *, kill_after_facts: int | None = None, kill_delay_s: float = 0.0, quiet: bool = False) -> bool:
        """Sample until the puller exits (True) or, with ``kill_after_facts``, until it has
        stored that many facts of its own and ``kill_delay_s`` more passed: then SIGKILL (False)."""
        last = time.monotonic()
        killed_at: float | None = None
        while True:
            self.sample()
            if self.reap(block=False):
                break
            now = time.monotonic()
            if (kill_after_facts is not None and killed_at is None
                    and counters(self.watch)[0] - self.start_count >= kill_after_facts):
                killed_at = now + kill_delay_s
            if killed_at is not None and now >= killed_at:
                self.proc.send_signal(signal.SIGKILL)
                break
            if not quiet and now - last >= PROGRESS_EVERY_S:
                last = now
                done = counters(self.watch)[0]
                rate = (done - self.start_count) / (now - self.start)
                print(f"  {done:>10,}/{self.total:,} facts  {rate:>7,.0f} facts/s  RSS {self.rss_kib / 1024:5.1f} MiB"
                      f"  peak {self.hwm_kib / 1024:5.1f} MiB  {now - self.start:6.1f} s", flush=True)
            time.sleep(SAMPLE_EVERY_S)
        if self.exit is None:
            self.reap()
        out = self.proc.stdout.read() if self.proc.stdout else b""
        self.summary = json.loads(out) if out.strip() and killed_at is None else None
        return killed_at is None

    @property
    def peak_mib(self) -> float:
        return max(self.hwm_kib, self.maxrss_kib) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--facts", type=int, default=1_000_000)
    ap.add_argument("--kills", type=int, default=0, help="kill -9 the puller this many times first")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--fresh", action="store_true", help="load A again rather than use the cached one")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--check-workers", type=int, default=None,
                    help="STIGMEM_CHECK_WORKERS for the puller (default: the node's own choice)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)

    cache, meta = cached_a(args.facts, args.fresh)
    work = Path(tempfile.mkdtemp(prefix="stigmem-bench-sync-"))
    for f in cache.iterdir():
        if f.name.startswith("a.db"):
            shutil.copy2(f, work / f.name)
    a = Node(work, "a")
    a.api_key = meta["api_key"]
    b = Node(work, "b")
    try:
        peer_up(a, b)
        peer_up(b, a)
        b.stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMEM_")}
        env["STIGMEM_LOG_LEVEL"] = "warning"
        if args.check_workers is not None:
            env["STIGMEM_CHECK_WORKERS"] = str(args.check_workers)
        watch = sqlite3.connect(f"file:{b.db}?mode=ro", uri=True, isolation_level=None)

        kills = []
        for k in range(args.kills):
            run = Run(b.db, env, watch, args.facts)
            after = rng.randint(1, max(1, min(args.facts // (args.kills + 1), 20_000)))
            finished = run.run(kill_after_facts=after, kill_delay_s=rng.uniform(0, 0.15), quiet=True)
            (ingested, cursor) = counters(watch)
            (rows,) = watch.execute("SELECT COUNT(*) FROM facts WHERE received_from IS NOT NULL").fetchone()
            if rows != ingested:
                sys.exit(f"kill {k + 1}: {rows} facts stored but the counter says {ingested}")
            kills.append((ingested, cursor, finished, run.peak_mib))
            print(f"  kill -9 #{k + 1}: {ingested:,} facts committed at the kill (cursor {cursor}), "
                  f"peak RSS {run.peak_mib:.1f} MiB{' (the pull had already finished)' if finished else ''}",
                  flush=True)
        if any(kills[i][0] > kills[i + 1][0] for i in range(len(kills) - 1)):
            sys.exit(f"progress went backwards across kills: {kills}")

        print(f"pulling {args.facts:,} facts A -> B (`stigmem-node pull`, process start included)", flush=True)
        before = counters(watch)[0]
        t0 = time.perf_counter()
        passes, peak, workers, runs = 0, 0.0, 0.0, []
        while True:
            run = Run(b.db, env, watch, args.facts)
            run.run()
            passes += 1
            peak = max(peak, run.peak_mib)
            workers = max(workers, run.workers_kib / 1024)
            runs.append(run.summary)
            if run.exit != 0:
                sys.exit(f"pull failed (exit {run.exit}): {run.summary}")
            if counters(watch)[0] >= args.facts or passes >= 3 or not (run.summary or {}).get("new"):
                break
        elapsed = time.perf_counter() - t0
        got = counters(watch)[0] - before
        (count, distinct) = watch.execute(
            "SELECT COUNT(*), COUNT(DISTINCT id) FROM facts WHERE received_from IS NOT NULL").fetchone()
        watch.execute("ATTACH DATABASE ? AS a", (f"file:{a.db}?mode=ro",))
        (missing,) = watch.execute(
            "SELECT COUNT(*) FROM a.facts af WHERE af.received_from IS NULL AND af.scope IN ('company', 'public')"
            " AND NOT EXISTS (SELECT 1 FROM main.facts bf WHERE bf.id = af.id)").fetchone()
        (a_last,) = watch.execute("SELECT MAX(seq) FROM a.facts").fetchone()
        (cursor,) = watch.execute("SELECT cursor FROM main.replication_state").fetchone()
        from stigmem_node.store.facts import INSERT_COLS

        sample = watch.execute(f"SELECT {INSERT_COLS} FROM main.facts WHERE received_from IS NOT NULL"  # noqa: S608
                               f" LIMIT {CEILING_ROWS}").fetchall()
        watch.close()
        ceiling_rate = len(sample) / insert_ceiling(sample, work)
    finally:
        a.stop()
        b.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    ok = count == distinct == args.facts and missing == 0
    print(f"\n{args.facts:,} facts, seed {seed}, {len(kills)} kill -9 before the last run, {passes} pass(es)")
    print(f"stored on B: {count:,} rows, {distinct:,} distinct ids, {missing} of A's missing, "
          f"cursor {cursor} (A's last seq {a_last}): {'exactly once' if ok else 'WRONG'}")
    print(f"last run:    {got:,} facts in {elapsed:.1f} s = {got / elapsed:,.0f} facts/s")
    print(f"insert ceiling:  {ceiling_rate:,.0f} facts/s (the same rows, up to {CEILING_ROWS:,}, into an empty "
          f"schema in one transaction); ratio {got / elapsed / ceiling_rate:.3f}")
    print(f"peak RSS of the puller: {peak:.1f} MiB (last run)"
          + (f"; {max(k[3] for k in kills):.1f} MiB (killed runs)" if kills else "")
          + f"; its check workers together: {workers:.1f} MiB (sampled)")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
