"""Worker process of bench/side_by_side.py: client/loadtest's worker, with
participants for Janus and for the naive aiortc relay besides Conclave's. With
`--native-counting` its participants count what they receive on the relay's
native engine (bench/native_counter.py) instead of in Python. With `--srtp-cm`
they offer only AES128_CM_SHA1_80 in DTLS, as Chromium does (aiortc offers the
GCM profiles first), so servers run the SRTP profile browser legs run."""

from __future__ import annotations

import sys

from aiortc import rtcdtlstransport
from janus import JanusParticipant  # bench/ is sys.path[0]
from naive_relay import NaiveParticipant
from native_counter import use_native_counting

from client.loadtest.participants import FACTORIES
from client.loadtest.worker import worker_main

if __name__ == "__main__":
    if "--native-counting" in sys.argv[1:]:
        use_native_counting()
    if "--srtp-cm" in sys.argv[1:]:
        rtcdtlstransport.SRTP_PROFILES = [
            p
            for p in rtcdtlstransport.SRTP_PROFILES
            if p.openssl_profile == b"SRTP_AES128_CM_SHA1_80"
        ]
    worker_main({**FACTORIES, "janus": JanusParticipant, "naive": NaiveParticipant})
