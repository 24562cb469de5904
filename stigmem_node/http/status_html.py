"""The status page's HTML: one self-contained document, rendered on the server.

No external asset, no script: inline CSS, charts as inline SVG.  Every value is escaped
(``_e``): node URLs, node ids and errors come from peers and are hostile.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from stigmem_node.status import CHART_MINUTES, PeerStatus, StatusReport

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1f24;background:#fff}
h1{font-size:1.4em;margin:0 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #d0d7de;padding:4px 6px;text-align:left;
vertical-align:top}th{background:#f6f8fa}code,.mono{font-family:ui-monospace,monospace;font-size:12px;
word-break:break-all}.flash{padding:.5em .8em;border:1px solid #54aeff;background:#ddf4ff;margin:.6em 0}
.error{border-color:#ff8182;background:#ffebe9}.st-active{color:#1a7f37}.st-suspended{color:#9a6700}
.st-revoked,.st-rejected{color:#cf222e}.st-pending_approval{color:#0969da}form.inline{display:inline}
.charts{display:flex;gap:2em;flex-wrap:wrap}.muted{color:#57606a}dl{display:grid;grid-template-columns:max-content 1fr;
gap:2px 1em}dt{font-weight:600}dd{margin:0}
"""

FLASH_MESSAGES = {
    "approved": "Peer approved.",
    "suspended": "Peer suspended.",
    "resumed": "Peer resumed.",
    "signed_out": "Signed out.",
    "fingerprint_mismatch": "Refused: the fingerprint does not match the peer's key.",
    "invalid_fingerprint": "Refused: type or paste the peer's full fingerprint.",
    "peer_not_pending": "Refused: the peer is not pending approval.",
    "peer_status_conflict": "Refused: the peer is not in a state that allows this action.",
}
_ERROR_FLASHES = {"fingerprint_mismatch", "invalid_fingerprint", "peer_not_pending", "peer_status_conflict"}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _document(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>")


def sign_in(csrf: str, message: str | None = None) -> str:
    note = f'<p class="flash error" role="alert">{_e(message)}</p>' if message else ""
    return _document("stigmem-node status: sign in", (
        "<h1>stigmem-node status</h1>"
        f"{note}"
        f'<form method="post" action="/status/session" autocomplete="off">{_hidden(csrf)}'
        '<p><label for="api_key">API key (with <code>audit:read</code> or <code>admin:federation</code>)</label><br>'
        '<input id="api_key" name="api_key" type="password" size="70" required></p>'
        '<p><button type="submit" id="sign-in">Sign in</button></p></form>'))


def _when(value: str | None) -> str:
    return _e(value) if value else '<span class="muted">never</span>'


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return '<span class="muted">n/a</span>'
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _hidden(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(csrf)}">'


def _actions(peer: PeerStatus, csrf: str) -> str:
    base = f"/status/peers/{_e(peer.peer_id)}"
    if peer.status == "pending_approval":
        return (f'<form method="post" action="{base}/approve">{_hidden(csrf)}'
                f'<label>Full fingerprint <input name="fingerprint" size="40" required '
                f'aria-label="fingerprint of {_e(peer.node_id)}"></label> '
                f'<button type="submit" class="approve">Approve</button></form>')
    if peer.status == "active":
        return (f'<form class="inline" method="post" action="{base}/suspend">{_hidden(csrf)}'
                f'<button type="submit" class="suspend">Suspend</button></form>')
    if peer.status == "suspended":
        return (f'<form class="inline" method="post" action="{base}/resume">{_hidden(csrf)}'
                f'<button type="submit" class="resume">Resume</button></form>')
    return ""


def _peers(peers: tuple[PeerStatus, ...], csrf: str | None) -> str:
    if not peers:
        return '<p class="muted">No peers.</p>'
    head = ("<tr><th>Peer</th><th>Status</th><th>Fingerprint</th><th>Scopes</th><th>Last pull in</th>"
            "<th>Behind (facts)</th><th>Last pull out</th><th>Lag</th><th>Last error</th>"
            + ("<th>Actions</th>" if csrf else "") + "</tr>")
    rows = []
    for p in peers:
        error = (f"{_e(p.last_error)} ({p.consecutive_failures} failing)" if p.last_error
                 else '<span class="muted">none</span>')
        rows.append(
            f'<tr data-peer-id="{_e(p.peer_id)}" data-node-id="{_e(p.node_id)}">'
            f'<td><span class="mono">{_e(p.node_id)}</span><br><span class="mono muted">{_e(p.node_url)}</span></td>'
            f'<td class="status st-{_e(p.status)}">{_e(p.status)}</td>'
            f'<td class="mono fingerprint">{_e(p.fingerprint)}</td>'
            f"<td>{_e(', '.join(p.scopes))}</td>"
            f'<td class="last-pull-in">{_when(p.last_pull_in)}</td>'
            f"<td>{p.behind_facts}</td>"
            f'<td class="last-pull-out">{_when(p.last_pull_out)}</td>'
            f"<td>{_duration(p.lag_s)}</td>"
            f"<td>{error}</td>"
            + (f"<td>{_actions(p, csrf)}</td>" if csrf else "") + "</tr>")
    return f'<table id="peers">{head}{"".join(rows)}</table>'


def _audit(entries: tuple[dict[str, Any], ...], allowed: bool) -> str:
    if not allowed:
        return '<p class="muted">Audit events need the audit:read permission.</p>'
    if not entries:
        return '<p class="muted">No audit events.</p>'
    rows = "".join(
        f"<tr><td>{_e(a.get('seq'))}</td><td>{_e(a.get('ts'))}</td><td>{_e(a.get('event_type'))}</td>"
        f"<td class=\"mono\">{_e(a.get('actor'))}</td><td class=\"mono\">{_e(a.get('peer_id'))}</td>"
        f"<td>{_e(a.get('reason'))}</td></tr>" for a in entries)
    return (f'<table id="audit"><tr><th>Seq</th><th>Time</th><th>Event</th><th>Actor</th><th>Peer</th>'
            f"<th>Reason</th></tr>{rows}</table>")


def chart(title: str, counts: tuple[int, ...], first_minute: int, colour: str) -> str:
    """Bars of facts per minute as inline SVG (one bar per minute, oldest on the left)."""
    width, height, pad = 4 * CHART_MINUTES + 40, 120, 20
    top = max(counts) if counts else 0
    scale = (height - 2 * pad) / top if top else 0
    bars = []
    for i, n in enumerate(counts):
        h = n * scale
        minute = datetime.fromtimestamp((first_minute + i) * 60, tz=UTC).strftime("%H:%M")
        bars.append(f'<rect x="{30 + 4 * i}" y="{height - pad - h:.1f}" width="3" height="{h:.1f}" fill="{colour}">'
                    f"<title>{minute} UTC: {n}</title></rect>")
    total = sum(counts)
    return (f'<figure><figcaption>{_e(title)}: {total} in the last hour (peak {top}/min)</figcaption>'
            f'<svg role="img" aria-label="{_e(title)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}">'
            f'<line x1="28" y1="{height - pad}" x2="{width - 8}" y2="{height - pad}" stroke="#8c959f"/>'
            f'<text x="0" y="{pad + 4}" font-size="10">{top}</text>'
            f'<text x="0" y="{height - pad}" font-size="10">0</text>'
            f'<text x="30" y="{height - 4}" font-size="10">-60 min</text>'
            f'<text x="{width - 40}" y="{height - 4}" font-size="10">now</text>'
            f'{"".join(bars)}</svg></figure>')


def status_page(report: StatusReport, *, key_id: str, csrf: str, admin: bool, audit_allowed: bool,
                flash: str | None = None) -> str:
    n = report.node
    note = ""
    if flash in FLASH_MESSAGES:
        cls = "flash error" if flash in _ERROR_FLASHES else "flash"
        note = f'<p class="{cls}" role="status" id="flash">{_e(FLASH_MESSAGES[flash])}</p>'
    t = report.traffic
    body = (
        "<h1>stigmem-node status</h1>"
        f'<form class="inline" method="post" action="/status/session/end">{_hidden(csrf)}'
        f'<span class="muted">Signed in with key <code>{_e(key_id)}</code>'
        f'{" (admin:federation)" if admin else ""}</span> <button type="submit" id="sign-out">Sign out</button></form>'
        f"{note}"
        "<h2>This node</h2><dl>"
        f'<dt>Node id</dt><dd class="mono">{_e(n.node_id)}</dd>'
        f'<dt>URL</dt><dd class="mono">{_e(n.node_url)}</dd>'
        f'<dt>Key id</dt><dd class="mono">{_e(n.key_id)}</dd>'
        f'<dt>Fingerprint</dt><dd class="mono" id="node-fingerprint">{_e(n.fingerprint)}</dd>'
        f"<dt>Uptime</dt><dd>{_duration(n.uptime_s)}</dd>"
        f"<dt>Version</dt><dd>{_e(n.version)}</dd>"
        f"<dt>Generated</dt><dd>{_e(report.generated_at)}</dd></dl>"
        f"<h2>Peers</h2>{_peers(report.peers, csrf if admin else None)}"
        "<h2>Facts per minute, last hour</h2><div class=\"charts\">"
        f"{chart('Facts in', t.inbound, t.first_minute, '#0969da')}"
        f"{chart('Facts out', t.outbound, t.first_minute, '#1a7f37')}</div>"
        f"<h2>Recent audit events</h2>{_audit(report.audit, audit_allowed)}"
    )
    return _document("stigmem-node status", body)
