"""stigmem-node: a federated knowledge-node peer server."""

__version__ = "0.1.0"
