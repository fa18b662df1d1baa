"""Worker process of bench/side_by_side.py: client/loadtest's worker, with
participants for Janus and for the naive aiortc relay besides Conclave's."""

from __future__ import annotations

from janus import JanusParticipant  # bench/ is sys.path[0]
from naive_relay import NaiveParticipant

from client.loadtest.participants import FACTORIES
from client.loadtest.worker import worker_main

if __name__ == "__main__":
    worker_main({**FACTORIES, "janus": JanusParticipant, "naive": NaiveParticipant})
