"""/v1/facts (local facts, API key) and /v1/federation/facts (the pull, peer token).

Storage work runs in the lanes: reads in the read lane, writes in the write lane."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stigmem_node.errors import Forbidden, ValidationError
from stigmem_node.http.auth import client_addr, require
from stigmem_node.http.params import bool_param, int_param, scope_param
from stigmem_node.http.peers import json_body
from stigmem_node.new_facts import MAX_WAIT_S
from stigmem_node.peer_auth import AuthenticatedPeer
from stigmem_node.publish import DEFAULT_LIMIT, MAX_LIMIT, WaitablePage
from stigmem_node.tokens import TokenRejected
from stigmem_node.tombstones import TOMBSTONE_TUPLE_VERSION
from stigmem_node.vocabulary import DEFAULT_ERASURE_REASON

MAX_TOMBSTONE_LIMIT = 500

T = TypeVar("T")


async def create_facts(request: Request) -> Response:
    await require(request, "facts:write")
    body = await json_body(request)
    node = request.app.state.node
    facts = node.facts
    if "facts" in body:
        stored = await node.lanes.write(lambda: facts.assert_many(facts.validate_batch(body["facts"])))
        created = sum(1 for s in stored if s.created)
        # {"facts": [...], "created": n, "duplicates": m} as JSONResponse writes it, from
        # the facts' texts (made once, with their stored entries).
        listed = ",".join(s.text for s in stored)
        text = f'{{"facts":[{listed}],"created":{created},"duplicates":{len(stored) - created}}}'
        return Response(text.encode("utf-8"), status_code=201 if created else 200, media_type="application/json")
    (one,) = await node.lanes.write(lambda: facts.assert_many([facts.validate_one(body)]))
    return Response(one.text.encode("utf-8"), status_code=201 if one.created else 200, media_type="application/json")


async def list_facts(request: Request) -> JSONResponse:
    await require(request, "facts:read")
    q = request.query_params
    limit = int_param(request, "limit", 50, 1, MAX_LIMIT)
    node = request.app.state.node
    page = await node.lanes.read(
        node.facts.listing, cursor=q.get("cursor"), limit=limit, include_expired=bool_param(request, "include_expired"),
        entity=q.get("entity"), relation=q.get("relation"), scope=scope_param(request), source=q.get("source"),
    )
    return JSONResponse({"facts": page.facts, "cursor": page.cursor, "has_more": page.has_more, "total": page.total},
                        headers={"X-Total-Count": str(page.total)})


async def get_fact(request: Request) -> JSONResponse:
    await require(request, "facts:read")
    node = request.app.state.node
    return JSONResponse(await node.lanes.read(node.facts.get, request.path_params["fact_id"]))


def path_qs(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    query = request.scope.get("query_string", b"")
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


async def authenticate_peer(request: Request, then: Callable[[AuthenticatedPeer], T] | None = None,
                            ) -> tuple[AuthenticatedPeer, T | None]:
    """The authenticated peer, once its nonce (or a rejection's audit row) is committed, and
    what ``then`` read for it in the same worker call (``PeerAuthenticator.authenticate_then``)."""
    node = request.app.state.node
    try:
        peer, outcome = await node.peer_auth.authenticate_then(
            request.headers.get("authorization"), method=request.method, path_qs=path_qs(request),
            remote_addr=client_addr(request), then=then)
        request.state.peer = peer.node_id  # for the access log
        return peer, outcome
    except TokenRejected as exc:
        if exc.code == "invalid_signature" and exc.issuer:
            node.refresh_peer_keys_soon(exc.issuer)  # the peer may have rotated its key
        raise


async def pull(request: Request) -> Response:
    """GET /v1/federation/facts: one page for an approved peer with a fresh token; with
    ``wait=S``, a caught-up peer's request waits up to S seconds for new facts."""
    node = request.app.state.node
    publisher = node.publisher
    asked: dict[str, Any] = {}  # the page asked for, once the parameters are checked

    def read_page(peer: AuthenticatedPeer) -> bytes | WaitablePage | tuple[Forbidden, dict[str, Any]]:
        limit = int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        wait_s = int_param(request, "wait", 0, 0, MAX_WAIT_S)
        asked.update(cursor=request.query_params.get("cursor"), limit=limit, scope=scope_param(request))
        return (publisher.waitable_page if wait_s else publisher.page_or_refusal)(peer, **asked)

    peer, outcome = await authenticate_peer(request, read_page)
    if isinstance(outcome, WaitablePage):
        waiting = publisher.long_poll(peer, outcome, node.new_facts, int(request.query_params["wait"]), **asked)
        body = await until_disconnected(request, waiting)
        if body is None:  # the peer went away: nobody reads an answer
            return Response(status_code=204)
    else:
        body = await publisher.answer(peer, cast("bytes | tuple[Forbidden, dict[str, Any]]", outcome),
                                      client_addr(request))
    return Response(body, media_type="application/json")


async def until_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None (and ``work`` cancelled) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    return task.result() if not task.cancelled() else None


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def tombstones(request: Request) -> Response:
    """GET /v1/federation/tombstones: one page of this node's tombstones the peer may see,
    authenticated like the pull.  Only a subscriber that asks for the tombstone tuple it can
    verify (``tv=t2.1``) is served them; a request without ``tv`` (a reference subscriber,
    which polls every cycle and cannot store a non-empty page) gets an empty page, as before."""
    publisher = request.app.state.node.publisher

    def read_page(peer: AuthenticatedPeer) -> bytes:
        limit = int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_TOMBSTONE_LIMIT)
        version = request.query_params.get("tv")
        if version is not None and version != TOMBSTONE_TUPLE_VERSION:
            raise ValidationError("invalid_request", f"tv must be {TOMBSTONE_TUPLE_VERSION}", field="tv")
        return publisher.tombstone_page(peer, since=request.query_params.get("since"), limit=limit,
                                        empty=version is None)

    _, body = await authenticate_peer(request, read_page)
    return Response(cast(bytes, body), media_type="application/json")


async def erase_fact(request: Request) -> JSONResponse:
    """DELETE /v1/facts/{id}: erase one fact (reason in the query or a JSON body)."""
    principal = await require(request, "facts:erase")
    body = await json_body(request, required=False)
    reason = body.get("reason", request.query_params.get("reason", DEFAULT_ERASURE_REASON))
    node = request.app.state.node
    view = await node.lanes.write(node.erasure.erase_fact, request.path_params["fact_id"], reason,
                                  actor=principal.actor, remote_addr=client_addr(request))
    return JSONResponse(view)


async def create_tombstone(request: Request) -> JSONResponse:
    """POST /v1/tombstones: {"fact_id": ...} or {"entity": ...}, plus an optional reason."""
    principal = await require(request, "facts:erase")
    body = await json_body(request)
    unknown = sorted(set(body) - {"fact_id", "entity", "reason"})
    if unknown or ("fact_id" in body) == ("entity" in body):
        raise ValidationError("invalid_request", "the body must hold exactly one of fact_id and entity, and reason",
                              field=unknown[0][:40] if unknown else "body")
    reason = body.get("reason", DEFAULT_ERASURE_REASON)
    node = request.app.state.node
    who = principal.actor
    if "fact_id" in body:
        view = await node.lanes.write(node.erasure.erase_fact, body["fact_id"], reason, actor=who,
                                      remote_addr=client_addr(request))
    else:
        view = await node.lanes.write(node.erasure.erase_entity, body["entity"], reason, actor=who,
                                      remote_addr=client_addr(request))
    return JSONResponse(view, status_code=201 if view["created"] else 200)


async def entity_tombstones(request: Request) -> JSONResponse:
    """GET /v1/tombstones/{entity}: whether the entity is erased on this node, and when."""
    await require(request, "facts:erase")
    node = request.app.state.node
    return JSONResponse(await node.lanes.read(node.erasure.status, request.path_params["entity"]))
