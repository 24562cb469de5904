"""Shared helpers for the benchmarks: real nodes on loopback, wrk runs, process accounting."""

from __future__ import annotations

import compileall
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY_RE = re.compile(r"stgm_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")

# Every process a benchmark starts (`serve`, `pull`) imports the package as an installed node
# does: from byte-compiled files, which `pip install` writes.  A checkout installed in editable
# mode, run with PYTHONDONTWRITEBYTECODE, would compile every module again at every start.
compileall.compile_dir(str(ROOT / "stigmem_node"), quiet=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


class Node:
    """`stigmem-node serve` in a subprocess, stopped by PID."""

    def __init__(self, workdir: Path, name: str, cpu: int | None = None, extra_env: dict | None = None,
                 args: tuple[str, ...] = ()) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = workdir / f"{name}.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMEM_")}
        env.update({"STIGMEM_LOG_LEVEL": "warning", **(extra_env or {})})
        self.log = open(workdir / f"{name}.log", "w")  # noqa: SIM115 - open while the node runs, closed by stop()
        self.proc = subprocess.Popen(
            pinned([sys.executable, "-m", "stigmem_node", "serve", "--db", str(self.db), "--port", str(self.port),
                    *args], cpu),
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{name} did not start: {(workdir / f'{name}.log').read_text()}")
            time.sleep(0.05)
        self.log.flush()
        m = KEY_RE.search((workdir / f"{name}.log").read_text())
        self.api_key = m.group(0) if m else ""

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=60)

    def well_known(self) -> dict:
        return httpx.get(self.url + "/.well-known/stigmem").json()

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def peer_up(a: Node, b: Node) -> dict:
    """Register b on a and approve it by fingerprint; returns a's peer record of b."""
    with a.client() as c:
        peer = c.post("/v1/federation/peers", json=b.well_known()["declaration"]).json()
        res = c.post(f"/v1/federation/peers/{peer['peer_id']}/approve",
                     json={"pubkey_fingerprint": b.well_known()["pubkey_fingerprint"]})
        res.raise_for_status()
        return res.json()


WRK_LUA = r"""
local tokens = {}
local n = 0
local i = 0
init = function(args)
  for line in io.lines(os.getenv("TOKENS")) do n = n + 1; tokens[n] = line end
end
request = function()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format("GET", os.getenv("REQ_PATH"), {["Authorization"] = "Bearer " .. tokens[i]})
end
done = function(summary, latency, requests)
  io.write(string.format("JSON{\"requests\":%d,\"non2xx\":%d,\"p50_ms\":%.2f,\"p99_ms\":%.2f}\n",
    summary.requests, summary.errors.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def wrk(url: str, path: str, tokens_file: Path, *, seconds: int, connections: int, cpu: int | None) -> dict:
    if shutil.which("wrk") is None:
        sys.exit("wrk is required: apt-get install wrk")
    script = tokens_file.with_suffix(".lua")
    script.write_text(WRK_LUA)
    env = {**os.environ, "TOKENS": str(tokens_file), "REQ_PATH": path}
    out = subprocess.run(
        pinned(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url], cpu),
        capture_output=True, text=True, env=env, timeout=seconds + 60,
    ).stdout
    stats = json.loads(out.split("JSON", 1)[1].strip().splitlines()[0])
    stats["rps"] = stats["requests"] / seconds
    return stats


def fact_rows(db: Path, received: bool | None = None) -> list[tuple]:
    """Every fact row of a database, in insert-column order (optionally only received ones)."""
    from stigmem_node.store.facts import INSERT_COLS

    where = "" if received is None else f" WHERE received_from IS {'NOT ' if received else ''}NULL"
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT {INSERT_COLS} FROM facts{where}").fetchall()  # noqa: S608 - constant text


def insert_ceiling(rows: list[tuple], workdir: Path, database: Path | str | None = None, *, runs: int = 1) -> float:
    """Seconds to insert ``rows`` into an empty schema in one transaction: the ceiling that
    end-to-end rates are compared with (``database``: an empty one to use, default a new
    SQLite file in ``workdir``; ``runs``: the best of that many, each into a new SQLite file,
    so only with no ``database``)."""
    from stigmem_node.store import open_database
    from stigmem_node.store.facts import INSERT_COLS

    if database is not None and runs != 1:
        raise ValueError("an empty database given takes one run: it is not empty after it")
    marks = ",".join("?" * len(INSERT_COLS.split(",")))
    best = float("inf")
    for run in range(runs):
        db = open_database(database if database is not None else workdir / f"ceiling-{run}.db")
        t0 = time.perf_counter()
        with db.transaction():
            db.executemany(f"INSERT INTO facts ({INSERT_COLS}) VALUES ({marks})", rows)  # noqa: S608 - constant text
        best = min(best, time.perf_counter() - t0)
        db.close()
    return best
