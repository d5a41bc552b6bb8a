"""Runs the agent runtime: `python3 -m agents` (the agent image's command)."""

import sys

from agents._loop import main

sys.exit(main())
