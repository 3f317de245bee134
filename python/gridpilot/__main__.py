"""`python -m gridpilot` is the `gridpilot` command."""

from gridpilot.cli import main

raise SystemExit(main())
