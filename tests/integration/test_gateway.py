"""The control plane's HTTP gateway (control_plane/gateway.py): the web client's
files and its JSON API, on a real control plane with real etcd (the relay is a
registered stand-in: joining is all the control plane's business here)."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from conclave.processes import free_port
from control_plane.app import ControlPlane
from control_plane.attempts import Policy
from control_plane.gateway import SECURITY_HEADERS
from tests.integration.test_control_plane import Relays, in_view, relays

__all__ = ["relays"]


class Gateway:
    def __init__(self, plane: ControlPlane, base: str, http: aiohttp.ClientSession) -> None:
        self.plane = plane
        self.base = base
        self.http = http

    async def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], Any]:
        async with self.http.post(self.base + path, json=body, headers=headers) as response:
            return response.status, dict(response.headers), await response.json()


@pytest.fixture
async def gateway(etcd_endpoint: str, relays: Relays) -> AsyncIterator[Gateway]:
    plane = ControlPlane(
        [etcd_endpoint],
        attempts=Policy(burst=3, per_minute=1),
        trusted_proxies=[ipaddress.ip_network("127.0.0.0/8")],
        web_organisation="web",  # the page creates meetings, as `conclave dev` allows
    )
    port = free_port()
    await plane.start("127.0.0.1", 0, http_port=port)
    node = await relays.add()
    async with aiohttp.ClientSession() as http:
        gateway = Gateway(plane, f"http://127.0.0.1:{port}", http)
        await in_view_of(plane, node)
        yield gateway
    await plane.stop(grace=0)


async def in_view_of(plane: ControlPlane, node: str) -> None:
    class Wrapper:
        def __init__(self) -> None:
            self.plane = plane

    await in_view(Wrapper(), [node])  # type: ignore[arg-type]


async def test_create_join_and_end_a_meeting_over_http(gateway: Gateway) -> None:
    status, headers, room = await gateway.post(
        "/api/rooms", {"name": "standup", "passcode": "tea for two"}
    )
    assert status == 200
    assert room["link"] == f"{gateway.base}/m/{room['room_id']}"
    assert room["passcode"] == "tea for two" and len(room["host_key"]) == 48
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value
    status, headers, joined = await gateway.post(
        f"/api/rooms/{room['room_id']}/join",
        {"display_name": "Ada", "passcode": "tea for two", "publish": True},
    )
    assert status == 200 and joined["role"] == "participant" and joined["grant"]
    assert joined["signal_url"].startswith("ws://") and headers["Cache-Control"] == "no-store"
    status, _, host = await gateway.post(
        f"/api/rooms/{room['room_id']}/join",
        {"display_name": "Host", "host_key": room["host_key"], "publish": True},
    )
    assert status == 200 and host["role"] == "host"
    status, _, reply = await gateway.post(
        f"/api/rooms/{room['room_id']}/end", {"host_key": "00" * 24}
    )
    assert (status, reply["error"]) == (404, "not_found")
    status, _, _ = await gateway.post(
        f"/api/rooms/{room['room_id']}/end", {"host_key": room["host_key"]}
    )
    assert status == 200
    status, _, reply = await gateway.post(
        f"/api/rooms/{room['room_id']}/join",
        {"display_name": "Ada", "passcode": "tea for two"},
    )
    assert (status, reply["error"]) == (404, "not_found")


async def test_waiting_room_meetings_need_no_passcode(gateway: Gateway) -> None:
    _, _, room = await gateway.post("/api/rooms", {"name": "", "waiting_room": True})
    assert room["passcode"] == "" and room["waiting_room"] is True
    status, _, joined = await gateway.post(
        f"/api/rooms/{room['room_id']}/join", {"display_name": "Guest"}
    )
    assert status == 200 and joined["participant_id"]


async def test_wrong_passcodes_and_unknown_ids_are_one_reply_until_the_lockout(
    gateway: Gateway,
) -> None:
    """Behind a trusted proxy (here: loopback) the caller is its X-Forwarded-For
    address; a fresh one per run, so other tests' failures do not count."""
    caller = {"X-Forwarded-For": f"198.51.100.{uuid.uuid4().int % 250 + 1}, 127.0.0.1"}
    _, _, room = await gateway.post("/api/rooms", {"name": "x", "passcode": "tea for two"})
    join = f"/api/rooms/{room['room_id']}/join"
    wrong = await gateway.post(join, {"display_name": "M", "passcode": "guess"}, caller)
    unknown = await gateway.post(
        "/api/rooms/aaaa-bbbb-cccc-dddd-eeee/join", {"display_name": "M", "passcode": "g"}, caller
    )
    assert wrong[0] == unknown[0] == 404 and wrong[2] == unknown[2]
    statuses: list[int] = []
    for _ in range(4):  # the address's 3 failures are spent: then even the passcode waits
        status, headers, reply = await gateway.post(
            join, {"display_name": "M", "passcode": "tea for two" if statuses else "guess"}, caller
        )
        statuses.append(status)
    assert statuses[0] == 404 and statuses[-1] == 429, statuses
    assert reply["error"] == "too_many_attempts" and int(headers["Retry-After"]) > 0


async def test_bad_requests_get_clear_errors(gateway: Gateway) -> None:
    async with gateway.http.post(gateway.base + "/api/rooms", data=b"not json") as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_argument"
    status, _, reply = await gateway.post("/api/rooms", {"name": 7})
    assert (status, reply["error"]) == (400, "invalid_argument")
    status, _, reply = await gateway.post("/api/rooms", ["a list"])
    assert status == 400
    status, _, reply = await gateway.post("/api/rooms", {"name": "x" * 5000})
    assert status == 400
    async with gateway.http.post(
        gateway.base + "/api/rooms", data=b"{" + b" " * 20_000 + b"}"
    ) as response:
        assert response.status == 413
    status, _, reply = await gateway.post(
        "/api/rooms/not-an-id/join", {"display_name": "M", "passcode": "x"}
    )
    assert (status, reply["error"]) == (404, "not_found")  # a malformed id is just unknown


async def test_the_page_and_its_modules_are_served(gateway: Gateway) -> None:
    for path in ("/", "/m/aaaa-bbbb-cccc-dddd-eeee"):
        async with gateway.http.get(gateway.base + path) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "<html" in (await response.text()).lower()
            assert response.headers["Content-Security-Policy"]
    async with gateway.http.get(gateway.base + "/web/e2ee/sframe.js") as response:
        assert response.status == 200
        assert "javascript" in response.content_type
    async with gateway.http.get(gateway.base + "/web/../control_plane/app.py") as response:
        assert response.status == 404
