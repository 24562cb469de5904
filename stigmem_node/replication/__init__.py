"""Replication: pull every active peer's facts, verify each one, store it exactly once.

- ``transport``: one page from a peer (fresh token per request, the guarded outbound path,
  retries with backoff and ``Retry-After``, the page's shape);
- ``checker``: check pulled pages in worker processes (``page_check``, ``check_worker``);
- ``ingest``: store a checked page's facts with the cursor in one transaction,
  auditing the rejected ones;
- ``subscriber``: a pass over the peers (``Subscriber.run_pass``, ``stigmem-node pull``);
- ``schedule``: the in-server interval loop (``Scheduler``, ``serve --pull-interval``);
- ``results``: what a pass reports.

The node wires them (``Node.subscriber()``).
"""

from stigmem_node.replication.ingest import FACT_REJECTED, FACTS_REJECTED_SUMMARY, Ingest
from stigmem_node.replication.results import PassResult, PeerResult, PullError
from stigmem_node.replication.schedule import Scheduler
from stigmem_node.replication.subscriber import PullOptions, Subscriber
from stigmem_node.replication.transport import PageFetcher

__all__ = [
    "FACTS_REJECTED_SUMMARY",
    "FACT_REJECTED",
    "Ingest",
    "PageFetcher",
    "PassResult",
    "PeerResult",
    "PullError",
    "PullOptions",
    "Scheduler",
    "Subscriber",
]
