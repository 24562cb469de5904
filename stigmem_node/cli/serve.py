"""``serve``, ``init`` and ``demo``: run the node, create it, show it working."""

from __future__ import annotations

import asyncio
import logging

import click

from stigmem_node import __version__, logs
from stigmem_node.cli._click import command, root
from stigmem_node.cli._common import EXIT_OK, Globals, emit, open_node, settings_for
from stigmem_node.logs import ACCESS_LOG_MODES, LOG_FORMATS

log = logging.getLogger("stigmem_node.serve")


def _print_first_key(node_id: str, node_url: str, fingerprint: str, key: str) -> None:
    print(
        "First start: created the node identity and this admin API key (shown once, store it now):\n"
        f"  {key}\n"
        f"  use it as:  curl -H 'Authorization: Bearer {key}' {node_url}/v1/federation/peers\n"
        f"Node {node_id}, key fingerprint {fingerprint}",
        flush=True,
    )


@command(root, "serve", help="run the node")
@click.option("--host", help="address to bind (env STIGMEM_HOST, default 127.0.0.1)")
@click.option("--port", type=int, help="port (env STIGMEM_PORT, default 8765)")
@click.option("--node-url", help="public URL of this node (env STIGMEM_NODE_URL, default http://HOST:PORT)")
@click.option("--pull-interval", type=float,
              help="seconds between pulls from peers, 0: off (env STIGMEM_FEDERATION_PULL_INTERVAL_S, default 0)")
@click.option("--pull-wait", type=click.IntRange(0, 30),
              help="with a pull interval, follow each peer with long-polls of this many seconds, so new facts "
                   "arrive within a second; 0: interval only (env STIGMEM_PULL_WAIT_S, default 25)")
@click.option("--notify-peers", is_flag=True,
              help="after new facts commit, send a signed notification to each peer that may read them and "
                   "does not follow this node by long-poll (env STIGMEM_NOTIFY_PEERS)")
@click.option("--allow-insecure-http", is_flag=True,
              help="allow plain http to non-loopback peers (env STIGMEM_ALLOW_INSECURE_HTTP)")
@click.option("--access-log", is_flag=True,
              help="also write uvicorn's own line per request, raw path and query included (text)")
@click.option("--access-log-level", type=click.Choice(ACCESS_LOG_MODES),
              help="which requests the access log records: off, errors (status 400 and above) or all "
                   "(env STIGMEM_ACCESS_LOG, default errors)")
@click.option("--log-format", type=click.Choice(LOG_FORMATS),
              help="log lines on stderr as text or one JSON object each (env STIGMEM_LOG_FORMAT, default text)")
@click.option("--trusted-proxies", help="comma-separated addresses whose X-Forwarded-For is believed "
                                        "(env STIGMEM_TRUSTED_PROXIES; default: none)")
@click.option("--request-timeout", type=float, help="seconds within which a whole request must arrive "
                                                    "(env STIGMEM_REQUEST_TIMEOUT_S, default 30)")
@click.option("--max-connections", type=int, help="open connections served at once; more get 503 "
                                                  "(env STIGMEM_MAX_CONNECTIONS, default 1000)")
def cmd_serve(g: Globals, *, host: str | None, port: int | None, node_url: str | None, pull_interval: float | None,
              pull_wait: int | None, notify_peers: bool, allow_insecure_http: bool, access_log: bool,
              access_log_level: str | None, log_format: str | None,
              trusted_proxies: str | None, request_timeout: float | None, max_connections: int | None) -> int:
    from stigmem_node.http.server import bind, serve
    from stigmem_node.node import Node

    settings = settings_for(g, host=host, port=port, node_url=node_url, pull_interval_s=pull_interval,
                            pull_wait_s=pull_wait, notify_peers=True if notify_peers else None,
                            allow_insecure_http=True if allow_insecure_http else None,
                            trusted_proxies=trusted_proxies, request_timeout_s=request_timeout,
                            max_connections=max_connections, access_log=access_log_level, log_format=log_format)
    # Listen first: a port in use or a host that does not resolve fails before anything exists.
    sockets = bind(settings.host, settings.port)
    try:
        node = Node(settings, serving=True)
        key = node.first_admin_key()
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if key:
        _print_first_key(node.identity.node_id, node.identity.node_url, node.identity.fingerprint, key)
    # The first-start hint above and the line below go to the terminal (stdout); the log to stderr.
    logs.setup(settings.log_level, settings.log_format)
    print(f"stigmem-node {__version__}: node {node.identity.node_url} listening on {settings.host}:{settings.port} "
          f"(database {settings.database_label})", flush=True)
    log.info("node %s listening on %s:%s", node.identity.node_url, settings.host, settings.port,
             extra={"event": "node_started", "node_id": node.identity.node_id, "node_url": node.identity.node_url,
                    "version": __version__, "database": settings.database_label,
                    "access_log": settings.access_log})
    serve(node, sockets, access_log=access_log)
    return EXIT_OK


@command(root, "init", help="create the database, identity and first admin key, without serving")
@click.option("--node-url", help="public URL of this node (env STIGMEM_NODE_URL)")
@click.option("--host", hidden=True)
@click.option("--port", type=int, hidden=True)
def cmd_init(g: Globals, *, node_url: str | None, host: str | None, port: int | None) -> int:
    node = open_node(g, serving=True, node_url=node_url, host=host, port=port)
    key = node.first_admin_key()
    info = {**node.info(), "admin_key": key}
    emit(g, info, lambda i: (f"Node {i['node_id']} is ready in {i['database']} "
                             f"(fingerprint {i['pubkey_fingerprint']})."
                             + (f"\nAdmin API key (shown once, store it now):\n  {key}" if key else "")))
    return EXIT_OK


@command(root, "demo", help="two nodes on loopback, federated end to end, in a few seconds", global_options=False)
def cmd_demo(g: Globals) -> int:
    from stigmem_node.demo import run_demo

    return asyncio.run(run_demo())
