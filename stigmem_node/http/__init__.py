"""The HTTP edge: a thin starlette app over the node's use cases."""

from stigmem_node.http.app import create_app

__all__ = ["create_app"]
