"""POST /v1/federation/notify: a peer says it has new facts; this node pulls it now.

The body is read up to its cap and no further, verified as the bytes that arrived
(``notification``) by ``PeerAuthenticator.authenticate_notification``, and only then
does anything happen: a pass of that peer's pull (``Node.pull_soon``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from stigmem_node.http.auth import client_addr
from stigmem_node.notification import KEY_ID_HEADER, MAX_NOTIFICATION_BYTES, SIGNATURE_HEADER, NotificationRejected


async def _capped_body(request: Request) -> bytes:
    """The body, or ``malformed_notification`` as soon as it runs past the cap."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_NOTIFICATION_BYTES:
            raise NotificationRejected("malformed_notification",
                                       f"a notification is at most {MAX_NOTIFICATION_BYTES} bytes")
    return bytes(body)


async def notify(request: Request) -> JSONResponse:
    node = request.app.state.node
    headers = request.headers
    remote = client_addr(request)
    try:
        body = await _capped_body(request)
    except NotificationRejected as exc:  # audited like any other refused notification
        await node.peer_auth.notification_refused(exc, remote_addr=remote)
        raise
    try:
        verified = await node.peer_auth.authenticate_notification(
            body, headers.get(SIGNATURE_HEADER), headers.get(KEY_ID_HEADER), remote_addr=remote)
    except NotificationRejected as exc:
        if exc.code == "invalid_signature" and exc.issuer:
            node.refresh_peer_keys_soon(exc.issuer)  # the peer may have rotated its key, as for a token
        raise
    return JSONResponse({"pull": node.pull_soon(verified.peer.peer_id)}, status_code=202)
