"""Real nodes for tests: `stigmem-node serve` subprocesses on free loopback ports."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

KEY_RE = re.compile(r"stgm_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMEM_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(*args: str, db: Path | str | None = None, env: dict[str, str] | None = None,
            cwd: Path | str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (``python -m stigmem_node``)."""
    cmd = [sys.executable, "-m", "stigmem_node", *args]
    if db is not None:
        cmd += ["--db", str(db)]
    return subprocess.run(cmd, capture_output=True, text=True, env=node_env(env), cwd=cwd, timeout=timeout)


class RunningNode:
    def __init__(self, workdir: Path, name: str = "node", env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), port: int | None = None, db: Path | None = None) -> None:
        """``db``: an existing database to serve (a second process on one node's file)."""
        self.workdir = workdir
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = db or workdir / f"{name}.db"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stigmem_node", "serve", "--db", str(self.db), "--port", str(self.port),
             "--host", "127.0.0.1", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=node_env(env), cwd=workdir,
        )
        self.api_key = ""
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            log = self.log()
            self.stop()
            raise RuntimeError(f"{self.name} did not become healthy:\n{log}")
        match = KEY_RE.search(self.log())
        self.api_key = match.group(0) if match else ""

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def client(self, key: str | None = None) -> httpx.Client:
        token = self.api_key if key is None else key
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def well_known(self) -> dict[str, Any]:
        return httpx.get(self.url + "/.well-known/stigmem", timeout=5).json()

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, db=self.db, env=env)

    def cli_json(self, *args: str) -> Any:
        res = self.cli(*args, "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
