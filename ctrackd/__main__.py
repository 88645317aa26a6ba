"""`python -m ctrackd` is the same as the `ctrackd` console script."""

from ctrackd.cli import main

raise SystemExit(main())
