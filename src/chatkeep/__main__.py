"""`python -m chatkeep` is the `chatkeep` command."""

from chatkeep.cli import main

raise SystemExit(main())
