"""What the supervisor's reconcile pass and its operator controls share about this host's agents."""

from __future__ import annotations

import asyncio


class Fleet:
    """The lock both hold while they act on containers, and what each leaves for the other."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        """Held by a pass and by a control, so neither acts on what the other changes."""
        self.kick = asyncio.Event()
        """Set to run a pass now rather than at the next interval."""
        self.running: frozenset[str] = frozenset()
        """Users whose container the last pass found running."""
        self.paused_out: set[str] = set()
        """Users whose container a pause removed, until it starts again. The router sets
        the pause keys before it sends the control, so a pass may stop the agents first:
        the control's report counts them all the same."""
