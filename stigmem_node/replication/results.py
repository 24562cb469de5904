"""What a pull reports: per peer (``PeerResult``), per pass (``PassResult``), per committed
page (``PageProgress``), and why a peer could not be pulled (``PullError``); and the one
``pull_summary`` log line per peer and pass (``log_summary``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from stigmem_node.errors import StigmemError


class PullError(StigmemError):
    """A peer could not be pulled this time (after retries where retrying makes sense)."""

    code = "pull_failed"


@dataclass
class PeerResult:
    peer_id: str
    node_id: str
    ok: bool = True
    pages: int = 0
    new: int = 0
    duplicates: int = 0
    rejected: int = 0
    error: str | None = None
    error_code: str | None = None
    note: str | None = None
    duration_s: float = 0.0
    tombstones: int = 0  # the peer's tombstones applied here in this pass
    erased: int = 0  # facts they erased
    tombstones_refused: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PassResult:
    peers: list[PeerResult] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.peers)

    def totals(self) -> dict[str, int]:
        return {
            "peers_ok": sum(p.ok for p in self.peers), "peers_failed": sum(not p.ok for p in self.peers),
            "new": sum(p.new for p in self.peers), "duplicates": sum(p.duplicates for p in self.peers),
            "rejected": sum(p.rejected for p in self.peers),
            "tombstones": sum(p.tombstones for p in self.peers), "erased": sum(p.erased for p in self.peers),
            "tombstones_refused": sum(p.tombstones_refused for p in self.peers),
        }

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.totals(), "duration_s": round(self.duration_s, 3),
                "peers": [p.as_dict() for p in self.peers]}


@dataclass(frozen=True)
class PageProgress:
    """One page of a peer's facts committed, with the totals of the pull so far."""

    peer_id: str
    node_id: str
    pages: int
    facts: int  # stored or already held, this pull
    rejected: int
    elapsed_s: float


def log_summary(log: logging.Logger, result: PeerResult, trigger: str, **extra: Any) -> None:
    """The ``pull_summary`` line of one peer's pull (``trigger``: ``schedule`` or ``pull``):
    INFO when it succeeded, else WARNING."""
    outcome = "skipped" if result.note and result.note.startswith("skipped") else ("ok" if result.ok else "failed")
    fields = {"event": "pull_summary", "peer": result.node_id, "peer_id": result.peer_id, "outcome": outcome,
              "pages": result.pages, "facts_new": result.new, "facts_duplicate": result.duplicates,
              "facts_rejected": result.rejected, "tombstones": result.tombstones, "erased": result.erased,
              "tombstones_refused": result.tombstones_refused, "duration_ms": round(result.duration_s * 1000, 3),
              "error_code": result.error_code, "trigger": trigger, **extra}
    tail = f"; {result.error_code}: {result.error}" if result.error else (f"; {result.note}" if result.note else "")
    more = "".join(f", {k.replace('_', ' ')} {v:g}" if isinstance(v, float) else f", {k.replace('_', ' ')} {v}"
                   for k, v in extra.items())
    log.log(logging.INFO if result.ok else logging.WARNING,
            "pull from %s %s: %d new, %d duplicate, %d rejected, %d tombstones, %d pages, %.0f ms%s%s",
            result.node_id, outcome, result.new, result.duplicates, result.rejected, result.tombstones,
            result.pages, result.duration_s * 1000, more, tail, extra=fields)
