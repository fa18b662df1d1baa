"""Worker process of bench/side_by_side.py: client/loadtest's worker, with
participants for Janus and for the naive aiortc relay besides Conclave's. With
`--native-counting` its participants count what they receive on the relay's
native engine (bench/native_counter.py) instead of in Python."""

from __future__ import annotations

import sys

from janus import JanusParticipant  # bench/ is sys.path[0]
from naive_relay import NaiveParticipant
from native_counter import use_native_counting

from client.loadtest.participants import FACTORIES
from client.loadtest.worker import worker_main

if __name__ == "__main__":
    if "--native-counting" in sys.argv[1:]:
        use_native_counting()
    worker_main({**FACTORIES, "janus": JanusParticipant, "naive": NaiveParticipant})
