"""The HTTP gateway: the web client's files and a small JSON API over RoomService.

Browsers cannot speak gRPC, so the control plane also serves HTTP (`--http-port`):
the meeting page (web/), and `/api/` calls that run the very RoomService handlers
the gRPC server runs, with the caller's address as their source (attempt limits,
removals) and their status mapped to HTTP. Only what a page needs is exposed:
create a meeting, join one, end one; everything else a host does goes over the
relay's signalling once joined.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, NoReturn

import grpc
from aiohttp import web

from control_plane.service import RoomService
from protos import rooms_pb2

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
MAX_BODY_BYTES = 16 * 1024
# Every response: no meeting link leaks through Referer, no content sniffing, and
# the page may talk only to its own origin (API) and to relays over WebSocket.
SECURITY_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "media-src 'self' blob: mediastream:; worker-src 'self'; style-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_argument"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthenticated"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "removed"),
    grpc.StatusCode.FAILED_PRECONDITION: (423, "locked"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "too_many_attempts"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
}


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """What RoomService handlers use of a gRPC context, for an HTTP request: the
    peer address (as gRPC spells it), x-forwarded-for as metadata, and abort."""

    def __init__(self, request: web.Request) -> None:
        self._request = request

    def peer(self) -> str:
        address = self._request.remote or ""
        return f"ipv6:[{address}]:0" if ":" in address else f"ipv4:{address}:0"

    # A request from the web page (or anything speaking its JSON API): CreateRoom
    # may take it without an API key where the operator allows it
    # (`--web-create-organisation`, control_plane/service.py).
    from_web_page = True

    def invocation_metadata(self) -> list[tuple[str, str]]:
        headers = self._request.headers
        metadata = []
        if "X-Forwarded-For" in headers:
            metadata.append(("x-forwarded-for", headers["X-Forwarded-For"]))
        if "Authorization" in headers:
            metadata.append(("authorization", headers["Authorization"]))
        return metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(code, details)


class Gateway:
    """`routes()` for an aiohttp application; `service` does the work."""

    def __init__(self, service: RoomService, web_dir: Path = WEB_DIR) -> None:
        self._service = service
        self._web_dir = web_dir

    def application(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[_security_headers, _api_errors]
        )
        app.add_routes(
            [
                web.get("/", self._page),
                web.get("/m/{room_id}", self._page),
                web.post("/api/rooms", self._create),
                web.post("/api/rooms/{room_id}/join", self._join),
                web.post("/api/rooms/{room_id}/end", self._end),
            ]
        )
        app.router.add_static("/web", self._web_dir)
        return app

    async def _page(self, request: web.Request) -> web.StreamResponse:
        index = self._web_dir / "index.html"
        if not index.is_file():
            raise web.HTTPNotFound(text="the web client is not installed")
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    async def _create(self, request: web.Request) -> web.Response:
        body = await _json(request)
        room = await self._service.CreateRoom(
            rooms_pb2.CreateRoomRequest(
                name=_text(body, "name"),
                passcode=_text(body, "passcode"),
                waiting_room=_flag(body, "waiting_room"),
                screen_share=_text(body, "screen_share"),
            ),
            _Context(request),
        )
        link = f"{request.scheme}://{request.host}/m/{room.room_id}"
        return web.json_response(
            {
                "room_id": room.room_id,
                "name": room.name,
                "passcode": room.passcode,
                "host_key": room.host_key,
                "waiting_room": room.waiting_room,
                "screen_share": room.screen_share,
                "link": link,
            }
        )

    async def _join(self, request: web.Request) -> web.Response:
        body = await _json(request)
        response = await self._service.JoinRoom(
            rooms_pb2.JoinRoomRequest(
                room_id=request.match_info["room_id"],
                display_name=_text(body, "display_name"),
                publish=_flag(body, "publish"),
                passcode=_text(body, "passcode"),
                host_key=_text(body, "host_key"),
                rejoin_participant_id=_text(body, "rejoin_participant_id"),
                rejoin_token=_text(body, "rejoin_token"),
                unreachable_node_id=_text(body, "unreachable_node_id"),
                region=_text(body, "region"),
                full_node_id=_text(body, "full_node_id"),
            ),
            _Context(request),
        )
        return web.json_response(
            {
                "room_id": response.room_id,
                "participant_id": response.participant_id,
                "node_id": response.node_id,
                "signal_url": response.signal_url,
                "grant": response.grant,
                "grant_expires_at_ms": response.grant_expires_at_ms,
                "role": "host" if _text(body, "host_key") else "participant",
            },
            headers={"Cache-Control": "no-store"},
        )

    async def _end(self, request: web.Request) -> web.Response:
        body = await _json(request)
        await self._service.EndRoom(
            rooms_pb2.EndRoomRequest(
                room_id=request.match_info["room_id"], host_key=_text(body, "host_key")
            ),
            _Context(request),
        )
        return web.json_response({})


@web.middleware
async def _security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


@web.middleware
async def _api_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """RoomService refusals as JSON `{"error", "message"}` with an HTTP status."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except _Aborted as exc:
        status, code = _HTTP_STATUS.get(exc.code, (500, "internal"))
        headers = {}
        if status == 429:
            wait = re.search(r"(\d+)", exc.details)
            headers["Retry-After"] = wait.group(1) if wait else "60"
        return web.json_response(
            {"error": code, "message": exc.details}, status=status, headers=headers
        )


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, "the body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"{name!r} must be text")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"{name!r} must be true or false")
    return value
