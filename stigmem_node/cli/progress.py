"""``pull``'s progress on a terminal: one line, rewritten in place, with each peer's pages,
facts and facts per second; a peer's result line once it is done.  And what a pull kept,
counted page by page, for when it is interrupted."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TextIO

from stigmem_node.replication.results import PageProgress, PeerResult


@dataclass
class Kept:
    """What one peer's pull committed so far."""

    node_id: str
    pages: int = 0
    facts: int = 0


class PullProgress:
    """Counts committed pages per peer; on a terminal (``stream`` given) also shows them."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.kept: dict[str, Kept] = {}
        self.live: dict[str, PageProgress] = {}

    def page(self, p: PageProgress) -> None:
        kept = self.kept.setdefault(p.peer_id, Kept(p.node_id))
        kept.pages, kept.facts = p.pages, p.facts
        self.live[p.peer_id] = p
        self._draw()

    def done(self, r: PeerResult) -> None:
        self.live.pop(r.peer_id, None)
        if self.stream is not None:
            self._clear()
            self.stream.write(result_line(r) + "\n")
            self._draw()

    def finish(self) -> None:
        if self.stream is not None:
            self._clear()

    def _clear(self) -> None:
        if self.stream is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _draw(self) -> None:
        if self.stream is None or not self.live:
            return
        parts = []
        for p in self.live.values():
            rate = p.facts / p.elapsed_s if p.elapsed_s > 0 else 0.0
            parts.append(f"{p.node_id}: {p.pages} pages, {p.facts} facts, {rate:,.0f} facts/s")
        width = self._width()
        line = "pulling " + " | ".join(parts)
        if len(line) >= width:
            line = line[: max(width - 2, 10)] + "…"
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()

    def _width(self) -> int:
        """The width of the terminal the progress is drawn on (COLUMNS first, as usual)."""
        columns = os.environ.get("COLUMNS", "")
        if columns.isdigit() and int(columns) > 0:
            return int(columns)
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 100  # type: ignore[union-attr]
        except (OSError, ValueError, AttributeError):
            return 100

    def interrupted_message(self) -> str:
        if not self.kept:
            return "interrupted; no page had been committed yet"
        kept = "; ".join(f"{k.node_id}: {k.pages} pages, {k.facts} facts" for k in self.kept.values())
        return f"interrupted; kept what was committed: {kept} (the next pull carries on from there)"


def result_line(r: PeerResult) -> str:
    """One peer's pull, for people."""
    mark = "ok  " if r.ok else "FAIL"
    tail = f"  {r.error} ({r.error_code})" if r.error else (f"  ({r.note})" if r.note else "")
    return (f"{mark} {r.node_id}: {r.new} new, {r.duplicates} duplicate, {r.rejected} rejected, "
            f"{r.pages} pages, {r.duration_s:.1f} s{tail}")
