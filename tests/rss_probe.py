"""Run one outbound action in a fresh process and report how much its peak RSS grew.

    python -m tests.rss_probe cli ARG...          stigmem_node.cli.main([ARG...])
    python -m tests.rss_probe register DB FILE    POST the declaration in FILE to /v1/federation/peers
                                                  of the node in DB (its HTTP app, in process)

The last line of stdout is one JSON object: ``baseline_kib`` (the resident memory just
before the action, everything imported: VmRSS), ``peak_kib`` (the high-water mark of resident
memory after it: VmHWM), ``maxrss_before_kib`` and ``maxrss_after_kib`` (ru_maxrss), ``exit``
(CLI exit code or HTTP status), ``stdout``, ``stderr`` (CLI) or ``body`` (HTTP).
``peak_kib - baseline_kib`` bounds from above how much the action grew the process at its
worst (the high-water mark may even predate the action).

VmHWM rather than ru_maxrss for the peak: the kernel carries ru_maxrss over fork and exec,
so a child of a large process (pytest after many tests) starts with its parent's size as
its ru_maxrss, which would hide the growth being measured.  Linux only (/proc).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import resource
import sys
from pathlib import Path

import httpx

from stigmem_node import cli
from stigmem_node.config import from_env
from stigmem_node.http import create_app
from stigmem_node.node import Node


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(action):
    gc.collect()
    baseline, maxrss_before = status_kib("VmRSS"), maxrss_kib()
    result = action()
    return {"baseline_kib": baseline, "peak_kib": status_kib("VmHWM"), "maxrss_before_kib": maxrss_before,
            "maxrss_after_kib": maxrss_kib()}, result


def run_cli(argv: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()

    def action() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return cli.main(argv)

    report, code = measure(action)
    return {**report, "exit": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def run_register(db: str, declaration_file: str) -> dict:
    node = Node(from_env({}).with_overrides(db_path=Path(db)))
    key = node.first_admin_key()
    app = create_app(node)
    body = json.loads(Path(declaration_file).read_text(encoding="utf-8"))

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.post("/v1/federation/peers", json=body, headers={"Authorization": f"Bearer {key}"})

    report, res = measure(lambda: asyncio.run(post()))
    return {**report, "exit": res.status_code, "body": res.json()}


def main(argv: list[str]) -> int:
    if argv[:1] == ["cli"]:
        report = run_cli(argv[1:])
    elif argv[:1] == ["register"] and len(argv) == 3:
        report = run_register(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
