"""Structured logs (stigmem_node.logs): the JSON fields, the access log's route templates and
levels, one pull_summary line per peer and pass, and no secret in any line of a federation."""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stigmem_node.encoding import b64url_decode
from stigmem_node.logs import REQUEST_FIELDS, JsonFormatter, TextFormatter
from tests.engines import Engine
from tests.nodes import RunningNode, ServedNode, stop_all

REQUIRED = {"time", "level", "event", "logger", "message", *REQUEST_FIELDS}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PEERS = "/v1/federation/peers"


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """``pred()``'s first true value; ``timeout`` is a failsafe against waiting for ever."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON log object with the required fields."""
    out = []
    for line in text.splitlines():
        obj = json.loads(line)  # every line is JSON
        assert set(obj) >= REQUIRED, line
        assert RFC3339_UTC.match(obj["time"]), line
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", obj["event"]), line
        assert obj["route"] is None or "?" not in obj["route"], line
        out.append(obj)
    return out


# -- the formatter ------------------------------------------------------------------------------
def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("stigmem_node.test", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    record.__dict__.update(extra)
    record.created = 0.25  # 1970-01-01T00:00:00.250Z
    return record


def test_json_lines_carry_time_level_event_request_fields_and_extras() -> None:
    line = JsonFormatter().format(_record(event="pull_summary", peer="stigmem:node:x", duration_ms=1.5, pages=3))
    obj = json.loads(line)
    assert "\n" not in line
    assert obj == {"time": "1970-01-01T00:00:00.250Z", "level": "warning", "event": "pull_summary",
                   "logger": "stigmem_node.test", "message": "hello world", "request_id": None,
                   "peer": "stigmem:node:x", "route": None, "status": None, "duration_ms": 1.5, "pages": 3}
    plain = json.loads(JsonFormatter().format(_record()))
    assert plain["event"] == "log" and set(plain) >= REQUIRED


def test_json_lines_hold_a_traceback_in_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_text_lines_have_an_rfc3339_utc_time() -> None:
    assert TextFormatter().format(_record()) == "1970-01-01T00:00:00.250Z WARNING stigmem_node.test: hello world"


# -- the access log -----------------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_records() -> Iterator[list[logging.LogRecord]]:
    logger = logging.getLogger("stigmem_node.access")
    handler = _Records()
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def _requests(node: ServedNode) -> dict[str, httpx.Response]:
    with httpx.Client(base_url=node.url, timeout=10) as anon, node.client() as admin:
        return {
            "healthz": anon.get("/healthz", headers={"X-Request-Id": "req-healthz"}),
            "unauthorized": anon.get("/v1/facts/some-id?cursor=secret-looking-query"),
            "no_route": anon.get("/no/such/path?x=1"),
            "peer_missing": admin.get(PEERS + "/stigmem:node:nobody/with/slashes?q=1"),
        }


@pytest.mark.parametrize("mode", ["off", "errors", "all"])
def test_access_log_levels_route_templates_and_request_ids(start_node, access_records, mode: str) -> None:
    node = start_node("a", env={"STIGMEM_ACCESS_LOG": mode})
    answers = _requests(node)
    time.sleep(0.2)  # the record follows the response
    lines = {r.request_id: r for r in access_records if getattr(r, "event", None) == "http_request"}  # type: ignore[attr-defined]
    answered = {name: res.headers["x-request-id"] for name, res in answers.items()}
    expected = {"off": set(), "errors": {"unauthorized", "no_route", "peer_missing"},
                "all": {"healthz", "unauthorized", "no_route", "peer_missing"}}[mode]
    assert {name for name, rid in answered.items() if rid in lines} == expected
    assert len(lines) == len(expected)
    if mode == "off":
        return
    routes = {name: lines[rid].route for name, rid in answered.items() if rid in lines}  # type: ignore[attr-defined]
    assert routes["unauthorized"] == "/v1/facts/{fact_id}"
    assert routes["no_route"] is None
    assert routes["peer_missing"] == "/v1/federation/peers/{ref:path}"
    for record in lines.values():
        text = record.getMessage()
        assert "?" not in text and "secret-looking-query" not in text and "with/slashes" not in text
        assert record.status == answers[next(n for n, r in answered.items() if r == record.request_id)].status_code  # type: ignore[attr-defined]
        assert record.duration_ms >= 0  # type: ignore[attr-defined]
    admin = lines[answered["peer_missing"]]
    assert admin.actor == "apikey:" + node.api_key.split("_")[1]  # type: ignore[attr-defined]
    if mode == "all":
        assert lines["req-healthz"].route == "/healthz" and lines["req-healthz"].status == 200  # type: ignore[attr-defined]


# -- a federation with JSON logs: pull summaries, and no secret anywhere -------------------------
def _register_and_approve(a: RunningNode, peer: RunningNode) -> None:
    wk = peer.well_known()
    with a.client() as c:
        rec = c.post(PEERS, json=wk["declaration"])
        assert rec.status_code == 201, rec.text
        ok = c.post(f"{PEERS}/{rec.json()['peer_id']}/approve", json={"pubkey_fingerprint": wk["pubkey_fingerprint"]})
        assert ok.status_code == 200, ok.text


def _secrets_of(node: RunningNode) -> list[str]:
    """Every secret of ``node`` in the forms a careless log line could hold."""
    out = [node.api_key, node.api_key.split("_", 2)[2]]
    pepper = Path(str(node.db) + ".pepper").read_text().strip()
    out += [pepper, *(part.split(":", 1)[1] for part in pepper.split(","))]
    for (private,) in node.sql("SELECT private_key FROM node_keys"):
        raw = b64url_decode(private)
        out += [private, raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")]
    return out


def test_a_federation_logs_json_summaries_and_no_secret(tmp_path: Path, engine: Engine) -> None:
    env = {"STIGMEM_LOG_FORMAT": "json", "STIGMEM_ACCESS_LOG": "all"}
    a = RunningNode(tmp_path / "a", "a", env=env, database_url=engine.url("a"), split_stderr=True)
    b = RunningNode(tmp_path / "b", "b", env=env, args=("--pull-interval", "0.5"), database_url=engine.url("b"),
                    split_stderr=True)
    try:
        # The first-start hint is on the terminal (stdout), not in the log.
        assert a.api_key and a.api_key in a.log() and a.api_key not in a.stderr_text()
        a_id, b_id = a.well_known()["node_id"], b.well_known()["node_id"]
        _register_and_approve(a, b)
        _register_and_approve(b, a)
        secrets = _secrets_of(a) + _secrets_of(b)
        created = a.cli("apikey", "create", "--permissions", "facts:write,facts:read", "--json")
        assert created.returncode == 0, created.stderr
        extra_key = json.loads(created.stdout)["key"]
        secrets.append(extra_key)
        with httpx.Client(base_url=a.url, headers={"Authorization": f"Bearer {extra_key}"}, timeout=10) as c:
            res = c.post("/v1/facts", json={"entity": "e:logged", "relation": "memory:note", "source": "agent:t",
                                            "value": {"type": "string", "v": "hello"}, "scope": "public"})
            assert res.status_code == 201, res.text
        # B's schedule pulls the fact and says so in one pull_summary line.
        summary = wait_for(lambda: [o for o in json_lines(b.stderr_text()) if o["event"] == "pull_summary"
                                    and o["facts_new"] >= 1], 60, "B's scheduled pull summary")[0]
        assert summary["peer"] == a_id and summary["outcome"] == "ok" and summary["trigger"] in ("schedule", "follow")
        assert summary["level"] == "info" and summary["duration_ms"] >= 0 and summary["pages"] >= 1
        # A token B mints for A: accepted once, then refused as a replay; a forged one refused.
        minted = b.cli("token", "mint", "--peer", a_id, "--json")
        assert minted.returncode == 0, minted.stderr
        token = json.loads(minted.stdout)["token"]
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        secrets += [token, forged, token.rsplit(".", 1)[1]]
        statuses = [httpx.get(a.url + "/v1/federation/facts", headers={"Authorization": f"Bearer {t}"},
                              timeout=10).status_code for t in (token, token, forged)]
        assert statuses[0] == 200 and statuses[1] == 401 and statuses[2] == 401, statuses
        # A cron pull on A: one pull_summary line per peer on stderr, JSON with --json.
        pulled = a.cli("pull", "--json")
        assert pulled.returncode == 0, pulled.stderr
        pull_lines = json_lines(pulled.stderr)
        assert [(o["event"], o["peer"], o["trigger"]) for o in pull_lines] == [("pull_summary", b_id, "pull")]
        assert "\r" not in pulled.stderr  # no progress when not on a terminal
        # The access log names B as the peer of its accepted pulls, by route template.
        a_lines = json_lines(a.stderr_text())
        pulls = [o for o in a_lines if o["event"] == "http_request" and o["route"] == "/v1/federation/facts"]
        assert any(o["peer"] == b_id and o["status"] == 200 for o in pulls)
        assert any(o["status"] == 401 and o["peer"] is None for o in pulls)
        everything = {"a": a.stderr_text(), "b": b.stderr_text(), "pull": pulled.stderr + pulled.stdout}
    finally:
        stop_all([a, b], wait=True)
    everything["a"], everything["b"] = a.stderr_text(), b.stderr_text()  # with the shutdown lines
    for name, text in everything.items():
        if name != "pull":
            json_lines(text)
        for secret in secrets:
            assert len(secret) >= 16 and secret not in text, (name, secret[:6])
