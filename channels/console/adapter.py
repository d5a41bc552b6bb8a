"""The console adapter: reads lines from a text stream, prints replies for its own session."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import TextIO

from channels.base import Capabilities, Publish
from channels.console import convert
from gateway.envelope import Outbound


class ConsoleChannel:
    """A terminal as a channel; each `stockade chat` process is its own conversation.

    `input_ended` is set at end of input; `done` once, besides, every message got a reply.
    """

    def __init__(self, user: str, session: str, stdin: TextIO, stdout: TextIO) -> None:
        self._user = user
        self._session = session
        self._stdin = stdin
        self._stdout = stdout
        self._awaiting: set[str] = set()
        self.input_ended = asyncio.Event()
        self.done = asyncio.Event()

    @property
    def name(self) -> str:
        return convert.NAME

    @property
    def capabilities(self) -> Capabilities:
        return convert.CAPABILITIES

    def _start_reader(self) -> asyncio.Queue[str]:
        # A blocking read of a terminal must not hold the event loop, and a daemon
        # thread (unlike the default executor) never holds up the process's exit.
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str] = asyncio.Queue()

        def read() -> None:
            while True:
                line = self._stdin.readline()
                loop.call_soon_threadsafe(lines.put_nowait, line)
                if line == "":
                    return

        threading.Thread(target=read, name="console-stdin", daemon=True).start()
        return lines

    async def receive(self, publish: Publish) -> None:
        lines = self._start_reader()
        seq = 0
        while (line := await lines.get()) != "":
            if not line.strip():
                continue
            seq += 1
            inbound = convert.line_to_inbound(
                line, user=self._user, session=self._session, seq=seq, now=time.time()
            )
            self._awaiting.add(inbound.event_id)
            await publish(inbound)
        self.input_ended.set()
        self._check_done()

    async def send(self, outbound: Outbound) -> None:
        if not convert.is_for(outbound, self._session):
            return
        for part in convert.render_parts(outbound):
            self._stdout.write(part + "\n")
        self._stdout.flush()
        self._awaiting.discard(outbound.reply_to)
        self._check_done()

    async def show_typing(self, conversation_id: str, thread_id: str) -> None:
        """A terminal shows no typing indicator."""

    def _check_done(self) -> None:
        if self.input_ended.is_set() and not self._awaiting:
            self.done.set()


def terminal_channel(user: str, session: str) -> ConsoleChannel:
    return ConsoleChannel(user, session, sys.stdin, sys.stdout)
