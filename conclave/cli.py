"""The `conclave` command: a thin dispatcher that imports only the part it runs.

Starting a relay should not import the client, and `conclave join` should not pay
for the control plane's imports, so each command's module is loaded on demand.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module with `main(argv: list[str]) -> int`, whether it wants the
# command word itself in argv, one-line help)
COMMANDS: dict[str, tuple[str, bool, str]] = {
    "dev": ("conclave.dev", False, "run a local cluster: etcd, a control plane and relays"),
    "control-plane": ("control_plane.main", False, "run a control-plane replica (gRPC)"),
    "relay": (
        "relay.main",
        False,
        "run a relay node (signalling and media); `relay drain NODE_ID` drains one",
    ),
    "room": ("client.cli", True, "create, inspect, list participants of, and end meetings"),
    "join": ("client.cli", True, "join a meeting with synthetic audio/video and report"),
    "loadtest": (
        "client.loadtest",
        False,
        "`loadtest media`: load a cluster with counting publishers and subscribers",
    ),
    "sim": ("control_plane.sim", False, "simulate a day of meetings through the placement code"),
    "keys": ("conclave.keys_cli", False, "create, list and revoke API keys (talks to etcd)"),
}

# `conclave COMMAND SUBCOMMAND ...` run by a module of their own (without both words).
SUBCOMMANDS: dict[tuple[str, str], str] = {("relay", "drain"): "relay.drain_cli"}

USAGE = "usage: conclave COMMAND [ARGS...]   (conclave COMMAND --help for details)"


def _help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [USAGE, "", "Conclave: a WebRTC SFU cluster.", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in COMMANDS.items()]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    """Dispatch `argv` (without the program name); returns the exit code."""
    if not argv:
        print(_help(), file=sys.stderr)
        return 2
    command = argv[0]
    if command in ("-h", "--help", "help"):
        print(_help())
        return 0
    entry = COMMANDS.get(command)
    if entry is None:
        print(f"{USAGE}\nconclave: error: unknown command {command!r}", file=sys.stderr)
        return 2
    module_name, keep_command, _ = entry
    subcommand = SUBCOMMANDS.get((command, argv[1])) if len(argv) > 1 else None
    if subcommand is not None:
        module_name, keep_command, argv = subcommand, False, argv[1:]
    module = importlib.import_module(module_name)
    result = module.main(argv if keep_command else argv[1:])
    return 0 if result is None else int(result)


def main() -> None:
    """Console-script entry point (`conclave = conclave.cli:main`)."""
    try:
        code = run(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
