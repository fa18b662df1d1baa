"""`conclave room ...` and `conclave join ...`: the client side of the command line.

Every command prints one JSON object on stdout (pretty by default, one compact line
with `--json`) so scripts and tests can read it, except `room audit`, which prints
one line per entry unless `--json`; failures print one line on stderr and exit 1
(2 for usage errors).
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
from datetime import UTC, datetime
from typing import Any

import uvloop

from client.errors import ConclaveError
from client.sdk import KINDS, SOURCES, RoomsClient, control_plane_target
from client.sdk import join as sdk_join
from conclave.arguments import int_between, non_negative_float
from conclave.ice import addresses_from_env, use_host_addresses

PROG = "conclave"
PASSCODE_ENV = "CONCLAVE_PASSCODE"
HOST_KEY_ENV = "CONCLAVE_HOST_KEY"
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, tuple[dict[str, Any], int]]]
Renderer = Callable[[dict[str, Any]], str]  # text output of a command without --json


def main(argv: list[str]) -> int:
    """Run one client command; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check: Callable[[argparse.Namespace], str | None] | None = getattr(args, "check", None)
        problem = check(args) if check is not None else None
        if problem is not None:
            args.parser.error(problem)
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
    render: Renderer | None = getattr(args, "render", None)
    if render is not None and not args.json:
        text = render(result)
        if text:
            print(text, flush=True)
    else:
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
        help="the meeting's passcode (default: the server draws one and prints it once; "
        "none with --waiting-room)",
    )
    create.add_argument(
        "--waiting-room",
        action="store_true",
        help="joiners wait until a host admits them (`room admit`)",
    )
    create.add_argument(
        "--screen-share",
        choices=["hosts", "everyone"],
        default=None,
        help="who may share a screen without being given the right (default: hosts)",
    )
    create.set_defaults(handler=_room_create)

    host = argparse.ArgumentParser(add_help=False, parents=[common])
    host.add_argument("room_id", metavar="ROOM_ID")
    host.add_argument(
        "--host-key",
        default=None,
        help=f"the meeting's host key from `room create` (default: ${HOST_KEY_ENV})",
    )

    def host_command(action: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = room_commands.add_parser(action, parents=[host], help=help_text)
        sub.set_defaults(handler=handler, parser=sub)
        return sub

    host_command("get", _room_get, "show a meeting")
    host_command("end", _room_end, "end a meeting and disconnect everyone")
    host_command("participants", _room_participants, "list who is connected or waiting")
    admit = host_command("admit", _room_admit, "let waiting participants in")
    admit.add_argument("participant_ids", nargs="*", metavar="PARTICIPANT_ID")
    admit.add_argument("--all", action="store_true", help="everyone waiting now")
    admit.set_defaults(check=_check_admit)
    deny = host_command("deny", _room_deny, "turn waiting participants away")
    deny.add_argument("participant_ids", nargs="+", metavar="PARTICIPANT_ID")
    host_command("lock", _room_lock, "let nobody new in (hosts excepted)")
    host_command("unlock", _room_unlock, "let newcomers in again")
    suspend = host_command(
        "suspend", _room_suspend, "stop all media and sharing and lock, until lifted"
    )
    suspend.add_argument("--lift", action="store_true", help="lift the suspension")
    remove = host_command("remove", _room_remove, "disconnect a participant for good")
    remove.add_argument("participant_id", metavar="PARTICIPANT_ID")
    mute = host_command("mute", _room_mute, "mute one source of a participant")
    mute.add_argument("participant_id", metavar="PARTICIPANT_ID")
    mute.add_argument("source", type=_source, metavar="SOURCE", help=" | ".join(SOURCES))
    allow = host_command(
        "allow", _room_allow, "set what a participant may publish (no SOURCE: nothing)"
    )
    allow.add_argument("participant_id", metavar="PARTICIPANT_ID")
    allow.add_argument(
        "sources", nargs="*", type=_source, metavar="SOURCE", help=" | ".join(SOURCES)
    )
    allow.set_defaults(check=_check_allow)
    cohost = host_command("cohost", _room_cohost, "make a participant a co-host")
    cohost.add_argument("participant_id", metavar="PARTICIPANT_ID")
    cohost.add_argument("--revoke", action="store_true", help="make it a participant again")
    audit = host_command(
        "audit", _room_audit, "the meeting's audit log (also after it ended), oldest first"
    )
    audit.set_defaults(render=_render_audit)

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
        "--region",
        default=None,
        help="ask for a relay in this region (as relays name theirs with --region); a "
        "meeting gains one there if it has none (docs/cascading.md)",
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
        help="how long to stay once in (default 10)",
    )
    join.add_argument(
        "--wait-timeout",
        type=non_negative_float,
        default=None,
        metavar="SECONDS",
        help="how long to wait in a waiting room for a host (default: as long as it takes)",
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
    """`passcode` is null when the meeting has none (a waiting room without
    --passcode): then anyone with the id may knock, and the host decides."""
    name = args.name if args.name is not None else f"meeting-{secrets.token_hex(2)}"
    async with RoomsClient(args.control_plane) as rooms:
        room = await rooms.create_room(
            name,
            args.max_participants,
            args.passcode,
            waiting_room=args.waiting_room,
            screen_share=args.screen_share or "",
        )
    has_passcode = room.has_passcode or bool(room.passcode)
    if not has_passcode:
        print(
            f"{PROG}: no passcode: anyone with the meeting id can knock; "
            "the host admits them from the waiting room",
            file=sys.stderr,
        )
    return {
        "room_id": room.room_id,
        "name": room.name,
        "node_id": room.node_id,
        "passcode": room.passcode or None,
        "has_passcode": has_passcode,
        "host_key": room.host_key,
        "waiting_room": room.waiting_room,
        "screen_share": room.screen_share or "hosts",
        "expires_at_ms": room.expires_at_ms,
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
        **_policy(room),
        "has_passcode": room.has_passcode,
        "expires_at_ms": room.expires_at_ms,
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
                "role": p.role or "participant",
                "waiting": p.waiting,
                "publish_rights": list(p.publish_rights),
                "tracks": [
                    {
                        "track_id": t.track_id,
                        "kind": t.kind,
                        "source": t.source,
                        "muted": t.muted,
                    }
                    for t in p.tracks
                ],
            }
            for p in participants
        ],
    }, 0


async def _room_admit(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    async with RoomsClient(args.control_plane) as rooms:
        admitted = await rooms.admit_participants(
            args.room_id, _host_key(args), args.participant_ids, all=args.all
        )
    return {"room_id": args.room_id, "admitted": admitted}, 0


async def _room_deny(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    async with RoomsClient(args.control_plane) as rooms:
        denied = await rooms.deny_participants(args.room_id, _host_key(args), args.participant_ids)
    return {"room_id": args.room_id, "denied": denied}, 0


async def _room_lock(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    return await _update_room(args, locked=True)


async def _room_unlock(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    return await _update_room(args, locked=False)


async def _room_suspend(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    return await _update_room(args, suspended=not args.lift)


async def _update_room(
    args: argparse.Namespace, *, locked: bool | None = None, suspended: bool | None = None
) -> tuple[dict[str, Any], int]:
    async with RoomsClient(args.control_plane) as rooms:
        room = await rooms.update_room(
            args.room_id, _host_key(args), locked=locked, suspended=suspended
        )
    return {"room_id": room.room_id or args.room_id, **_policy(room)}, 0


async def _room_remove(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    async with RoomsClient(args.control_plane) as rooms:
        await rooms.remove_participant(args.room_id, _host_key(args), args.participant_id)
    return {"room_id": args.room_id, "participant_id": args.participant_id, "removed": True}, 0


async def _room_mute(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    async with RoomsClient(args.control_plane) as rooms:
        await rooms.mute_participant(
            args.room_id, _host_key(args), args.participant_id, args.source
        )
    return {
        "room_id": args.room_id,
        "participant_id": args.participant_id,
        "source": args.source,
        "muted": True,
    }, 0


async def _room_allow(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    async with RoomsClient(args.control_plane) as rooms:
        await rooms.set_publish_rights(
            args.room_id, _host_key(args), args.participant_id, args.sources
        )
    return {
        "room_id": args.room_id,
        "participant_id": args.participant_id,
        "publish_rights": list(args.sources),
    }, 0


async def _room_cohost(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    role = "participant" if args.revoke else "cohost"
    async with RoomsClient(args.control_plane) as rooms:
        await rooms.set_role(args.room_id, _host_key(args), args.participant_id, role)
    return {"room_id": args.room_id, "participant_id": args.participant_id, "role": role}, 0


async def _room_audit(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    async with RoomsClient(args.control_plane) as rooms:
        entries = await rooms.get_audit_log(args.room_id, _host_key(args))
    return {
        "room_id": args.room_id,
        "entries": [
            {
                "at_ms": e.at_ms,
                "time": _iso_time(e.at_ms),
                "action": e.action,
                "actor": e.actor,
                "target": e.target,
                "detail": e.detail,
            }
            for e in entries
        ],
    }, 0


def _render_audit(result: dict[str, Any]) -> str:
    """One line per entry: time action actor target detail, separated by spaces;
    an empty field is "-", and only the detail (last) may contain spaces."""
    return "\n".join(
        " ".join(
            [
                entry["time"],
                entry["action"] or "-",
                entry["actor"] or "-",
                entry["target"] or "-",
                entry["detail"] or "-",
            ]
        )
        for entry in result["entries"]
    )


async def _join(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Join, stay `--duration` seconds (or until the meeting ends), leave, report.

    The session follows the meeting when its relay drains or dies (it asks the
    control plane again, client/session.py); `reconnects` in the report counts
    the moves. Exit code 0 also when the meeting was ended by `room end`; 1 (with
    the report still printed) when the connection was lost for good.
    """
    use_host_addresses(addresses_from_env())
    name = args.name or f"guest-{secrets.token_hex(2)}"
    publish: list[str] = args.publish
    passcode = args.passcode if args.passcode is not None else os.environ.get(PASSCODE_ENV, "")
    host_key = args.host_key or ""
    if args.no_e2ee:
        print(
            f"{PROG}: WARNING: end-to-end encryption is OFF (--no-e2ee): the relays can "
            "read this participant's media, and it cannot see encrypted participants'",
            file=sys.stderr,
        )
    async with RoomsClient(args.control_plane) as rooms:  # open: reconnects need it
        session = await sdk_join(
            rooms,
            args.room_id,
            name,
            publish,
            passcode=passcode,
            host_key=host_key,
            region=args.region or "",
            e2ee=not args.no_e2ee,
            video_codec=args.video_codec.upper(),
            wait_timeout=args.wait_timeout,
            on_waiting=_say_waiting,
        )
        code = 0
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.duration):
                    await session.wait_closed()
            # As shown during the meeting: leaving starts new keys for the others.
            security_code = session.security_code
            if session.closed:
                reason = session.closed_reason
                if reason is not None and reason != "connection_lost":
                    print(f"{PROG}: meeting closed: {reason}", file=sys.stderr)
                else:
                    print(f"{PROG}: error: the relay closed the connection", file=sys.stderr)
                    code = 1
        finally:
            await session.leave()
    return {
        "participant_id": session.participant_id,
        "node_id": session.node_id,
        "room_id": session.room_id,
        "role": session.role,
        "e2ee": session.e2ee,
        "security_code": security_code,
        "roster": sorted(set(session.seen.values())),  # a reconnect is no new name
        "remote": {name: dict(stats) for name, stats in sorted(session.stats().items())},
        "reconnects": session.reconnects,
    }, code


# ------------------------------------------------------------------- helpers


def _say_waiting() -> None:
    print(f"{PROG}: in the waiting room: waiting for the host to admit you", file=sys.stderr)


def _policy(room: Any) -> dict[str, Any]:
    return {
        "waiting_room": room.waiting_room,
        "locked": room.locked,
        "suspended": room.suspended,
        "screen_share": room.screen_share or "hosts",
    }


def _iso_time(ms: int) -> str:
    """UTC, to the millisecond: 2024-05-01T12:00:00.123Z."""
    when = datetime.fromtimestamp(ms / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _source(value: str) -> str:
    if value not in SOURCES:
        raise argparse.ArgumentTypeError(f"{value!r}: expected {' | '.join(SOURCES)}")
    return value


def _check_admit(args: argparse.Namespace) -> str | None:
    if args.all and args.participant_ids:
        return "give participant ids or --all, not both"
    if not args.all and not args.participant_ids:
        return "give the participant ids to admit, or --all"
    return None


def _check_allow(args: argparse.Namespace) -> str | None:
    if len(set(args.sources)) != len(args.sources):
        return "a source is given twice"
    return None


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
