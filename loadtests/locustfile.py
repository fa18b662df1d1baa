"""Locust users that create meetings and join them through the real RoomService.

Each user makes a meeting (CreateRoom), then joins it `--joins-per-meeting` times
(JoinRoom, valid calls only: wrong passcodes would lock the source address out,
control_plane/attempts.py, and every user shares 127.0.0.1), then makes the next
one. One call per task, with `--think-time` seconds (mean, uniform from 0.5x to
1.5x) between calls, so that the user count sets the offered load: closed-loop
users with no pause measure only the server's queue.

gRPC runs on gevent here (locust's users are greenlets): `init_gevent()` patches
gRPC before the first channel exists, and the sync stub's calls then yield to other
users instead of blocking the process. Every call fires locust's request event with
the gRPC method as its name, so locust's tables, percentiles and CSV files work.

Run it with `make loadtest` (loadtests/run.py starts a cluster and reads etcd and
CPU figures around the run), or by hand against a running control plane:
`locust -f loadtests/locustfile.py --headless -u 20 -r 5 -t 60s --host 127.0.0.1:50051`.
"""

# mypy: disable-error-code="import-not-found,import-untyped,misc,untyped-decorator,no-untyped-call"
# (locust is the `load` extra: `make lint` must pass without it installed, when its
# User is Any to mypy)

from __future__ import annotations

import itertools
import random
import secrets
import time
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, events, task

from conclave.credentials import METADATA_KEY, find_key, mint_token
from conclave.tls import channel_credentials, find_ca_file
from protos import rooms_pb2, rooms_pb2_grpc

grpc_gevent.init_gevent()  # before any channel or call: gRPC's waits become gevent's

CALL_TIMEOUT_S = 10.0  # a call that takes longer counts as failed (DEADLINE_EXCEEDED)
_names = itertools.count(1)


def _options(parser: Any) -> None:
    """Our options, next to locust's own (also settable as LOCUST_* variables)."""
    parser.add_argument(
        "--joins-per-meeting",
        type=int,
        default=5,
        help="JoinRoom calls on each meeting before the user makes the next (default 5)",
    )
    parser.add_argument(
        "--gate",
        choices=("passcode", "waiting-room"),
        default="passcode",
        help="passcode: joins pay the scrypt check (36 ms, the usual meeting); "
        "waiting-room: meetings without a passcode, joins without scrypt (default passcode)",
    )
    parser.add_argument(
        "--think-time",
        type=float,
        default=1.0,
        help="mean pause between one user's calls, seconds (default 1.0)",
    )


events.init_command_line_parser.add_listener(_options)


class MeetingUser(User):
    """Creates a meeting, joins it several times, creates the next; one call a task."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self._joins = max(0, int(getattr(options, "joins_per_meeting", 5)))
        self._waiting_room = getattr(options, "gate", "passcode") == "waiting-room"
        self._think = max(0.0, float(getattr(options, "think_time", 1.0)))
        target = str(self.host or "127.0.0.1:50051").removeprefix("http://")
        ca = find_ca_file()  # a dev cluster's CA: TLS, as every other client
        if ca is None:
            self._channel = grpc.insecure_channel(target)
        else:
            self._channel = grpc.secure_channel(target, channel_credentials(ca))
        self._stub = rooms_pb2_grpc.RoomServiceStub(self._channel)
        self._room_id = ""
        self._passcode = ""
        self._left = 0  # joins still to make on the current meeting

    def on_stop(self) -> None:
        self._channel.close()

    def wait_time(self) -> float:
        return self._think * random.uniform(0.5, 1.5)

    @task
    def next_call(self) -> None:
        if self._left > 0 and self._room_id:
            self._left -= 1
            self._call(
                "JoinRoom",
                rooms_pb2.JoinRoomRequest(
                    room_id=self._room_id,
                    display_name=f"Load {next(_names)}",
                    publish=True,
                    passcode=self._passcode,
                ),
            )
            return
        passcode = "" if self._waiting_room else secrets.token_hex(6)
        room = self._call(
            "CreateRoom",
            rooms_pb2.CreateRoomRequest(
                name="load test", passcode=passcode, waiting_room=self._waiting_room
            ),
        )
        if room is not None:
            self._room_id, self._passcode, self._left = room.room_id, room.passcode, self._joins

    def _call(self, method: str, request: Any) -> Any:
        """One unary call, reported to locust (time in ms, reply size in bytes)."""
        started = time.perf_counter()
        response: Any = None
        error: Exception | None = None
        try:
            response = getattr(self._stub, method)(
                request, timeout=CALL_TIMEOUT_S, metadata=_credentials()
            )
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=method,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=response.ByteSize() if response is not None else 0,
            exception=error,
            context={},
        )
        return response


def _credentials() -> tuple[tuple[str, str], ...]:
    """An API token of the key `conclave dev` left where clients look
    (conclave/credentials.py); none when there is no key file."""
    key = find_key()
    return ((METADATA_KEY, f"Bearer {mint_token(key)}"),) if key is not None else ()
