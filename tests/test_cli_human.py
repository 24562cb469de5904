"""The command line as a person uses it: pull's progress on a terminal (a real pseudo-terminal)
and its silence when piped, Ctrl-C during a pull, JSON errors with --json, human output
without Python literals, help text and environment variables for every option, shell
completion, the README's next steps as written, and the first-start hint."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from stigmem_node.cli import root
from tests.fakepeer import Behaviour, FakePeer
from tests.nodes import KEY_RE, ServedNode, node_env, run_cli_process

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "stigmem-node"


def _argv(node: ServedNode, *args: str) -> list[str]:
    db = ["--db", str(node.db)] + (["--database-url", node.database_url] if node.database_url else [])
    return [sys.executable, "-m", "stigmem_node", *args, *db]


@pytest.fixture
def fake() -> Iterator[FakePeer]:
    peer = FakePeer(name="human").up()
    yield peer
    peer.down()


def _pages(fake: FakePeer, n_facts: int, per_page: int) -> None:
    fake.page_cap = per_page
    fake.add(*(fake.make(f"e:progress:{i}", "public", f"v{i}") for i in range(n_facts)))


# -- pull: progress on a terminal, quiet when piped, Ctrl-C -------------------------------------
def _read_pty(master: int, proc: subprocess.Popen) -> str:
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out.decode(errors="replace")


def test_pull_shows_progress_on_a_terminal(node: ServedNode, fake: FakePeer) -> None:
    fake.register_on(node)
    _pages(fake, 9, 2)
    master, slave = pty.openpty()
    # A terminal 200 columns wide, whatever this one is: the line is cut to the terminal's width.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    env = {k: v for k, v in node_env().items() if k not in ("COLUMNS", "LINES")}
    try:
        proc = subprocess.Popen(_argv(node, "pull"), stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        screen = _read_pty(master, proc)
        stdout = proc.communicate(timeout=60)[0].decode()
    finally:
        os.close(master)
    assert proc.returncode == 0, (screen, stdout)
    # Rewritten in place (carriage return, erase line), page by page, with the rate.
    assert "\r\x1b[K" in screen
    for pages, facts in ((1, 2), (3, 6), (5, 9)):
        assert f"{fake.node_id}: {pages} pages, {facts} facts, " in screen, screen
    assert "facts/s" in screen
    assert re.search(rf"ok +{re.escape(fake.node_id)}: 9 new, 0 duplicate, 0 rejected, 5 pages", screen), screen
    assert "pull_summary" not in screen and "Traceback" not in screen
    assert "9 new" in stdout and "\r" not in stdout


def test_pull_is_quiet_when_piped(node: ServedNode, fake: FakePeer) -> None:
    fake.register_on(node)
    _pages(fake, 4, 2)
    res = subprocess.run(_argv(node, "pull"), capture_output=True, text=True, env=node_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr and "\x1b" not in res.stderr and "facts/s" not in res.stderr
    # Only the log: one pull_summary line for the peer.
    (line,) = res.stderr.splitlines()
    assert f"pull from {fake.node_id} ok: 4 new" in line
    assert re.search(rf"ok +{re.escape(fake.node_id)}: 4 new", res.stdout)


@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_ctrl_c_during_a_pull_says_what_was_kept(node: ServedNode, fake: FakePeer, as_json: bool) -> None:
    fake.register_on(node)
    _pages(fake, 10, 2)
    # Two pages answer, the third hangs until the puller goes away.
    fake.then(Behaviour("ok"), Behaviour("ok"))
    fake.set("hang", hang_s=120)
    proc = subprocess.Popen(_argv(node, "pull", *(["--json"] if as_json else [])), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=node_env(), text=True)
    try:
        deadline = time.monotonic() + 60  # a failsafe only

        def committed() -> int:  # the third page is asked for ahead, while the first two are stored
            return int(node.sql("SELECT COUNT(*) FROM facts WHERE received_from IS NOT NULL")[0][0])

        while (fake.open_hangs < 1 or committed() < 4) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.open_hangs >= 1 and committed() == 4, "the third page was never asked for"
        time.sleep(0.3)  # the puller counts a page just after its commit: let it see the second one
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and out == ""
    if as_json:
        error = json.loads(err)
        assert error["error"] == "interrupted"
        assert error["kept"] == [{"node_id": fake.node_id, "pages": 2, "facts": 4}]
    else:
        assert err.strip().splitlines() == [
            f"stigmem-node: interrupted; kept what was committed: {fake.node_id}: 2 pages, 4 facts "
            "(the next pull carries on from there)"]
    stored = node.cli_json("facts", "list", "--limit", "100")
    assert len([f for f in stored if f["entity"].startswith("e:progress:")]) == 4


# -- --json errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,code,exit_code", [
    (["peers", "show", "nobody"], "peer_not_found", 1),
    (["info", "--frobnicate"], "usage_error", 2),
    (["peers"], "usage_error", 2),
    (["facts", "list", "--limit", "0"], "usage_error", 2),
])
def test_with_json_every_error_is_json_on_stderr(node: ServedNode, argv: list[str], code: str,
                                                  exit_code: int) -> None:
    res = node.cli(*argv, "--json")
    assert res.returncode == exit_code, (res.stdout, res.stderr)
    assert res.stdout == ""
    error = json.loads(res.stderr)
    assert set(error) == {"error", "message"} and error["error"] == code and error["message"]


def test_with_json_a_missing_database_is_json_too(tmp_path: Path) -> None:
    res = run_cli_process("info", "--json", db=tmp_path / "none.db")
    assert res.returncode == 2
    assert json.loads(res.stderr)["error"] == "database_missing"


# -- human output --------------------------------------------------------------------------------
LITERALS = re.compile(r"\b(None|True|False)\b|\['")


def test_human_output_holds_no_python_literals(node: ServedNode, fake: FakePeer) -> None:
    fake.register_on(node)
    _pages(fake, 3, 2)
    fake.tombstones.append(fake.tombstone(fake.entries[0]))
    assert node.cli("facts", "add", "e:local", "memory:note", "hello").returncode == 0
    assert node.cli("pull").returncode == 0
    peer = node.cli_json("peers", "list")[0]["peer_id"]
    key_id = node.api_key.split("_")[1]
    commands = [["info"], ["peers", "list"], ["peers", "show", peer], ["peers", "show", fake.node_id],
                ["audit", "list"], ["audit", "tail"], ["audit", "verify"], ["apikey", "list"], ["facts", "list"],
                ["facts", "list", "--scope", "public"], ["pull"], ["token", "mint", "--peer", fake.node_id],
                ["peers", "suspend", peer], ["peers", "resume", peer], ["apikey", "revoke", key_id]]
    for argv in commands:
        res = node.cli(*argv)
        assert res.returncode in (0, 1), (argv, res.stderr)
        text = res.stdout + res.stderr
        assert text.strip(), argv
        found = LITERALS.search(text)
        assert found is None, (argv, found and text[max(0, found.start() - 80):found.end() + 80])


def test_peers_list_shows_whole_fingerprints(node: ServedNode, fake: FakePeer) -> None:
    fake.register_on(node)
    listed = node.cli("peers", "list").stdout
    assert fake.fingerprint in listed and len(fake.fingerprint) == len("sha256:") + 64


# -- help, environment variables, completion ---------------------------------------------------
def _commands(cmd: click.Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))


def _documented_env_flags() -> dict[str, str]:
    """docs/operating.md's configuration table: each CLI flag backed by a variable."""
    out: dict[str, str] = {}
    for line in (ROOT / "docs" / "operating.md").read_text().splitlines():
        cells = line.split("|")
        if len(cells) > 3 and cells[1].strip().startswith("`STIGMEM_"):
            var = cells[1].strip().strip("`")
            for flag in re.findall(r"--[a-z][a-z-]*", cells[2].split("(")[0]):  # not "(wherever --db goes)"
                out[flag] = var
    return out


def test_every_option_has_help_naming_its_environment_variable() -> None:
    env_flags = _documented_env_flags()
    assert {"--db", "--database-url", "--host", "--log-format", "--access-log-level"} <= set(env_flags)
    seen = 0
    for path, cmd in _commands(root, ("stigmem-node",)):
        for param in cmd.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            name = " ".join(path) + " " + param.opts[0]
            assert param.help, f"{name} has no help text"
            for opt in param.opts:
                if opt in env_flags:
                    seen += 1
                    assert env_flags[opt] in param.help, f"{name}: the help does not name {env_flags[opt]}"
    assert seen > 20


def test_help_shows_the_environment_variables() -> None:
    res = run_cli_process("serve", "--help")
    assert res.returncode == 0
    for var in ("STIGMEM_HOST", "STIGMEM_LOG_FORMAT", "STIGMEM_ACCESS_LOG", "STIGMEM_DB_PATH"):
        assert var in res.stdout, var


def test_bash_completion_script_and_completions() -> None:
    script = subprocess.run([str(BIN)], capture_output=True, text=True, timeout=30,
                            env=node_env({"_STIGMEM_NODE_COMPLETE": "bash_source"}))
    assert script.returncode == 0, script.stderr
    assert "_stigmem_node_completion()" in script.stdout and "complete " in script.stdout
    words = subprocess.run([str(BIN)], capture_output=True, text=True, timeout=30,
                           env=node_env({"_STIGMEM_NODE_COMPLETE": "bash_complete",
                                         "COMP_WORDS": "stigmem-node peers li", "COMP_CWORD": "2"}))
    assert words.returncode == 0 and "plain,list" in words.stdout.splitlines()


# -- the README and the first-start hint --------------------------------------------------------
def _next_steps() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Next steps"):text.index("Documentation:")]
    return re.findall(r"`(\.venv/bin/stigmem-node [^`]*)`", section)


def test_readme_next_steps_work_as_written(tmp_path: Path) -> None:
    steps = _next_steps()
    assert steps and all(s.startswith(".venv/bin/stigmem-node ") for s in steps)
    # The first command made ./.venv and ./stigmem.db (init does what serve does first).
    (tmp_path / ".venv").symlink_to(sys.prefix)
    assert subprocess.run([str(BIN), "init"], cwd=tmp_path, env=node_env(), capture_output=True,
                          timeout=60).returncode == 0
    runnable = [s for s in steps if s.split()[1] in ("info", "--help") or s.split()[1:3] in (
        ["peers", "list"], ["audit", "verify"])]
    assert {"info", "peers", "audit"} <= {s.split()[1] for s in runnable}
    for step in runnable:
        res = subprocess.run(shlex.split(step), cwd=tmp_path, env=node_env(), capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, (step, res.stderr)
        assert "Traceback" not in res.stderr


def test_the_first_start_hint_shows_the_whole_key_and_a_command_that_works(tmp_path: Path) -> None:
    res = run_cli_process("init", db=tmp_path / "n.db")
    assert res.returncode == 0, res.stderr
    (key,) = KEY_RE.findall(res.stdout)
    assert f"\n  {key}" in res.stdout  # whole, on a line of its own
    from tests.nodes import RunningNode

    node = RunningNode(tmp_path / "s", "s")
    try:
        banner = node.log()
        (key,) = set(KEY_RE.findall(banner))
        (command,) = [line.split("use it as:", 1)[1].strip() for line in banner.splitlines() if "use it as:" in line]
        answer = subprocess.run([*shlex.split(command), "-s", "-o", "/dev/null", "-w", "%{http_code}"],
                                capture_output=True, text=True, timeout=30)
        assert answer.stdout == "200", (command, answer.stdout, answer.stderr)
    finally:
        node.stop()
