"""`python -m client.loadtest ...`: as `conclave loadtest ...`; `_worker` runs a
worker process (worker_argv)."""

from __future__ import annotations

import sys

from client.loadtest import main

sys.exit(main(sys.argv[1:]))
