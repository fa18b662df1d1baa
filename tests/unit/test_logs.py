"""Server log formats (conclave/logs.py)."""

from __future__ import annotations

import json
import logging
import sys

from conclave.logs import JsonFormatter
from relay.main import parse_args


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("relay.room", logging.WARNING, __file__, 1, message, args, exc_info)


def test_json_lines_carry_time_level_process_logger_and_message() -> None:
    line = JsonFormatter("relay").format(record("layer %d of %s", 2, "ñ"))
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["process"] == "relay"
    assert entry["logger"] == "relay.room" and entry["msg"] == "layer 2 of ñ"
    assert entry["ts"].endswith("+00:00") and "\n" not in line


def test_json_lines_keep_a_traceback_on_one_line() -> None:
    line = JsonFormatter("relay").format(record("failed", exc=True))
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc"]


def test_relay_takes_the_log_options() -> None:
    args = parse_args(
        ["--etcd", "http://127.0.0.1:2379", "--node-id", "n1", "--log-format", "json",
         "--log-level", "WARNING"]
    )  # fmt: skip
    assert (args.log_format, args.log_level) == ("json", "warning")
