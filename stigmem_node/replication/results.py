"""What a pull reports: per peer (``PeerResult``), per pass (``PassResult``), and why a peer
could not be pulled (``PullError``)."""

from __future__ import annotations

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
