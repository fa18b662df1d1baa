"""`python -m control_plane`: the same as `conclave control-plane`."""

from control_plane.main import main

raise SystemExit(main())
