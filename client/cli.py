"""`conclave room ...` and `conclave join ...`: the client side of the command line.

Every command prints one JSON object on stdout (pretty by default, one compact line
with `--json`) so scripts and tests can read it; failures print one line on stderr
and exit 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from client.errors import ConclaveError
from client.sdk import KINDS, RoomsClient, Session, control_plane_target
from conclave.arguments import int_between, non_negative_float
from conclave.ice import addresses_from_env, use_host_addresses

PROG = "conclave"
PASSCODE_ENV = "CONCLAVE_PASSCODE"
HOST_KEY_ENV = "CONCLAVE_HOST_KEY"
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, tuple[dict[str, Any], int]]]


def main(argv: list[str]) -> int:
    """Run one client command; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format=f"{PROG}: %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # aiortc warns per undecodable frame (normal until a keyframe arrives);
        # the report already says how much media got through.
        for name in ("aiortc", "aioice"):
            logging.getLogger(name).setLevel(logging.ERROR)
    handler: Handler = args.handler
    try:
        result, code = uvloop.run(handler(args))
    except ConclaveError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    _print_json(result, compact=args.json)
    return code


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--control-plane",
        metavar="HOST:PORT",
        default=None,
        help="control-plane gRPC address (default: $CONCLAVE_CONTROL_PLANE or 127.0.0.1:50051)",
    )
    common.add_argument("--json", action="store_true", help="print one compact JSON line")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")

    parser = argparse.ArgumentParser(prog=PROG, description="Conclave meeting client.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    room = commands.add_parser("room", help="create, inspect and end meetings")
    room_commands = room.add_subparsers(dest="room_command", required=True, metavar="ACTION")
    create = room_commands.add_parser("create", parents=[common], help="create a meeting")
    create.add_argument("--name", default=None, help="meeting name (default: meeting-XXXX)")
    create.add_argument(
        "--max-participants",
        type=int_between(0),
        default=0,
        metavar="N",
        help="participant limit (default 0: the server's default)",
    )
    create.add_argument(
        "--passcode",
        default="",
        help="the meeting's passcode (default: the server draws one and prints it once)",
    )
    create.set_defaults(handler=_room_create)
    for action, handler, help_text in (
        ("get", _room_get, "show a meeting"),
        ("end", _room_end, "end a meeting and disconnect everyone"),
        ("participants", _room_participants, "list who is connected"),
    ):
        sub = room_commands.add_parser(action, parents=[common], help=help_text)
        sub.add_argument("room_id", metavar="ROOM_ID")
        sub.add_argument(
            "--host-key",
            default=None,
            help=f"the meeting's host key from `room create` (default: ${HOST_KEY_ENV})",
        )
        sub.set_defaults(handler=handler)

    join = commands.add_parser(
        "join", parents=[common], help="join a meeting with synthetic audio and video"
    )
    join.add_argument("room_id", metavar="ROOM_ID")
    join.add_argument("--name", default=None, help="display name (default: guest-XXXX)")
    join.add_argument(
        "--passcode",
        default=None,
        help="the meeting's passcode (default: $CONCLAVE_PASSCODE)",
    )
    join.add_argument(
        "--host-key",
        default=None,
        help="join as the meeting's host, with its host key instead of the passcode",
    )
    join.add_argument(
        "--publish",
        type=_publish_kinds,
        default=list(KINDS),
        metavar="audio,video|audio|video|none",
        help="what to send (default: audio,video)",
    )
    join.add_argument(
        "--duration",
        type=non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="how long to stay (default 10)",
    )
    join.add_argument(
        "--video-codec",
        choices=["vp8", "h264"],
        default="vp8",
        help="codec to send video in (default vp8; the relay offers it first)",
    )
    join.add_argument(
        "--no-e2ee",
        action="store_true",
        help="benchmarks only: send and receive media WITHOUT end-to-end encryption",
    )
    join.set_defaults(handler=_join)
    return parser


# ------------------------------------------------------------------ commands


async def _room_create(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    name = args.name if args.name is not None else f"meeting-{secrets.token_hex(2)}"
    async with RoomsClient(args.control_plane) as rooms:
        room = await rooms.create_room(name, args.max_participants, args.passcode)
    return {
        "room_id": room.room_id,
        "name": room.name,
        "node_id": room.node_id,
        "passcode": room.passcode,
        "host_key": room.host_key,
    }, 0


async def _room_get(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    async with RoomsClient(args.control_plane) as rooms:
        room = await rooms.get_room(args.room_id, _host_key(args))
    return {
        "room_id": room.room_id,
        "name": room.name,
        "node_id": room.node_id,
        "created_at_ms": room.created_at_ms,
        "max_participants": room.max_participants,
    }, 0


async def _room_end(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    async with RoomsClient(args.control_plane) as rooms:
        await rooms.end_room(args.room_id, _host_key(args))
    return {"room_id": args.room_id, "ended": True}, 0


async def _room_participants(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    async with RoomsClient(args.control_plane) as rooms:
        participants = await rooms.list_participants(args.room_id, _host_key(args))
    return {
        "room_id": args.room_id,
        "participants": [
            {
                "participant_id": p.participant_id,
                "display_name": p.display_name,
                "joined_at_ms": p.joined_at_ms,
                "tracks": [
                    {"track_id": t.track_id, "kind": t.kind, "muted": t.muted} for t in p.tracks
                ],
            }
            for p in participants
        ],
    }, 0


async def _join(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Join, stay `--duration` seconds (or until the meeting ends), leave, report.

    Exit code 0 also when the meeting was ended by `room end`; 1 (with the report
    still printed) when the relay dropped the connection without saying why.
    """
    use_host_addresses(addresses_from_env())
    name = args.name or f"guest-{secrets.token_hex(2)}"
    publish: list[str] = args.publish
    async with RoomsClient(args.control_plane) as rooms:
        passcode = args.passcode if args.passcode is not None else os.environ.get(PASSCODE_ENV, "")
        grant = await rooms.join_room(
            args.room_id, name, bool(publish), passcode, args.host_key or ""
        )
    if args.no_e2ee:
        print(
            f"{PROG}: WARNING: end-to-end encryption is OFF (--no-e2ee): the relays can "
            "read this participant's media, and it cannot see encrypted participants'",
            file=sys.stderr,
        )
    session = Session(
        grant, name, publish, e2ee=not args.no_e2ee, video_codec=args.video_codec.upper()
    )
    await session.start()
    code = 0
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.duration):
                await session.wait_closed()
        # As shown during the meeting: leaving starts new keys for the others.
        security_code = session.security_code
        if session.closed:
            if session.closed_reason is not None:
                print(f"{PROG}: meeting closed: {session.closed_reason}", file=sys.stderr)
            else:
                print(f"{PROG}: error: the relay closed the connection", file=sys.stderr)
                code = 1
    finally:
        await session.leave()
    return {
        "participant_id": session.participant_id,
        "node_id": session.node_id,
        "room_id": session.room_id,
        "e2ee": session.e2ee,
        "security_code": security_code,
        "roster": sorted(session.seen.values()),
        "remote": {name: dict(stats) for name, stats in sorted(session.stats().items())},
    }, code


# ------------------------------------------------------------------- helpers


def _host_key(args: argparse.Namespace) -> str:
    return str(args.host_key if args.host_key is not None else os.environ.get(HOST_KEY_ENV, ""))


def _print_json(result: dict[str, Any], compact: bool) -> None:
    if compact:
        text = json.dumps(result, separators=(",", ":"))
    else:
        text = json.dumps(result, indent=2)
    print(text, flush=True)


def _publish_kinds(value: str) -> list[str]:
    """`audio,video`, `audio`, `video` or `none` (also the empty string)."""
    value = value.strip().lower()
    if value in ("", "none"):
        return []
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or len(set(kinds)) != len(kinds):
        raise argparse.ArgumentTypeError(f"{value!r}: expected audio,video | audio | video | none")
    return kinds


__all__ = ["build_parser", "control_plane_target", "main"]
