"""A non-editable install carries its schema and works from any directory."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_schema_and_runs_from_another_directory(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("stigmem_node-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "stigmem_node/schema.sql" in names
        assert zf.read("stigmem_node/schema.sql") == (ROOT / "schema.sql").read_bytes()
        zf.extractall(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import stigmem_node, sys; from stigmem_node.cli import main;"
        "assert stigmem_node.__file__.startswith(sys.argv[1]), stigmem_node.__file__;"
        "sys.exit(main(['init', '--json', '--db', 'fresh.db']))"
    )
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=elsewhere, capture_output=True,
                         text=True, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["node_id"].startswith("stigmem:node:")
    assert (elsewhere / "fresh.db").exists()
