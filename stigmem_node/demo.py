"""`stigmem-node demo`: two nodes on loopback, federated end to end, in a few seconds."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import uvicorn

from stigmem_node.config import Settings
from stigmem_node.federation import Actor
from stigmem_node.http import create_app
from stigmem_node.node import Node
from stigmem_node.outbound import fetch_well_known

SAMPLE = [
    ("local", "stigmem://demo/team/roadmap", "memory:note", "string", "draft, not for sharing"),
    ("team", "stigmem://demo/team/standup", "memory:note", "text", "shared with the team only"),
    ("company", "stigmem://demo/product/launch", "memory:date", "datetime", "2027-03-01T09:00:00Z"),
    ("company", "stigmem://demo/product/price", "memory:eur", "number", 42),
    ("public", "stigmem://demo/product/name", "memory:name", "string", "Stigmem Café"),
    ("public", "stigmem://demo/product/open-source", "memory:flag", "boolean", True),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _serve(node: Node, port: int) -> tuple[uvicorn.Server, asyncio.Task]:
    server = uvicorn.Server(uvicorn.Config(create_app(node), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    return server, task


async def run_demo(say: Callable[[str], None] = print) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="stigmem-demo-"))
    servers: list[tuple[uvicorn.Server, asyncio.Task]] = []
    nodes: dict[str, Node] = {}
    try:
        for name in ("alpha", "beta"):
            port = _free_port()
            settings = Settings(db_path=workdir / f"{name}.db", port=port, node_url=f"http://127.0.0.1:{port}")
            nodes[name] = await asyncio.to_thread(Node, settings, serving=True)  # storage: off the loop
            servers.append(await _serve(nodes[name], port))
            fingerprint = nodes[name].identity.fingerprint[:19]
            say(f"1. started node {name} at {settings.public_url} (fingerprint {fingerprint}…)")
        alpha, beta = nodes["alpha"], nodes["beta"]
        operator = Actor("demo:operator", "local")
        for me, other in ((alpha, beta), (beta, alpha)):
            doc = await fetch_well_known(other.identity.node_url, timeout_s=5, allow_insecure_http=False)
            peer = await me.federation.register(doc["declaration"], actor=operator)
            await me.lanes.write(me.federation.approve, peer.id, doc["pubkey_fingerprint"], actor=operator)
            say(f"2. {_name(me, nodes)} verified {_name(other, nodes)}'s signed declaration and approved it by "
                f"fingerprint ({peer.status} -> active)")
        bodies = [{"entity": e, "relation": r, "value": {"type": t, "v": v}, "source": "stigmem://demo/agent",
                   "scope": scope, "confidence": 0.9} for scope, e, r, t, v in SAMPLE]
        await alpha.lanes.write(alpha.facts.assert_many, alpha.facts.validate_batch(bodies))
        say(f"3. alpha stored {len(bodies)} facts: one local, one team, two company, two public")
        result = await beta.subscriber().run_pass()
        pulled = result.peers[0]
        say(f"4. beta pulled from alpha with single-use signed tokens: {pulled.new} new facts, "
            f"{pulled.rejected} rejected, in {result.duration_s * 1000:.0f} ms")
        got, _, _ = await beta.lanes.read(beta.facts.query, cursor=None, limit=50)
        for f in got:
            say(f"   received {f['scope']:<8} {f['entity']}  {f['relation']} = {f['value']['v']!r}")
        scopes = {f["scope"] for f in got}
        say(f"5. local and team facts stayed on alpha: {'yes' if not scopes & {'local', 'team'} else 'NO'} "
            "(alpha shares company and public by default)")
        rows = await beta.lanes.read(beta.audit.verify)
        say(f"6. beta's audit trail: {rows.rows} rows, hash chain {'intact' if rows.ok else 'BROKEN'}")
        ok = result.ok and pulled.new == 4 and not scopes & {"local", "team"}
        say("Done: two nodes federated end to end." if ok else "The demo did not go as expected.")
        return 0 if ok else 1
    finally:
        for server, _ in servers:
            server.should_exit = True
        await asyncio.gather(*(t for _, t in servers), return_exceptions=True)
        for node in nodes.values():
            await asyncio.to_thread(node.close)
        shutil.rmtree(workdir, ignore_errors=True)


def _name(node: Node, nodes: dict[str, Node]) -> str:
    return next(k for k, v in nodes.items() if v is node)
