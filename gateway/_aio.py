"""Small asyncio helpers the core's long-running loops share."""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise CancelledError if this task was asked to stop, even if the request was lost.

    On Python 3.11, asyncio.wait_for (which redis-py uses around socket writes) can
    swallow a cancellation that races a completed operation, leaving it only in
    `task.cancelling()`. A loop that calls this at the top of every turn still stops.

    Only for a loop that owns its task. An aiohttp request handler shares its task
    with the later requests of its connection: a stale count there would end them all.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
