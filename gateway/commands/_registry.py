"""The command registry and the pure parser that turns message text into an invocation."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Final

from gateway.envelope import Inbound
from gateway.errors import CommandError
from gateway.policy.access import Role

# Telegram appends "@botname" to commands in groups; names are short ASCII words.
_COMMAND = re.compile(r"([a-z][a-z0-9_]{0,31})(?:@[A-Za-z0-9_]{1,64})?", re.ASCII)
_MAX_ARGS: Final = 16


@dataclass(frozen=True, slots=True)
class Invocation:
    """A parsed command: its lowercase name and whitespace-separated arguments."""

    name: str
    args: tuple[str, ...]


def parse(text: str, prefix: str = "/") -> Invocation | None:
    """The command in `text`, or None when the text is not a command."""
    stripped = text.strip()
    body = stripped[len(prefix) :]
    if not stripped.startswith(prefix) or not body or body[0].isspace():
        return None
    head, *rest = body.split(maxsplit=_MAX_ARGS)
    match = _COMMAND.fullmatch(head.lower())
    if match is None:
        return None
    return Invocation(name=match.group(1), args=tuple(rest[:_MAX_ARGS]))


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a handler may know about the call: the message and who sent it."""

    inbound: Inbound
    user_id: str
    registry: Registry
    role: Role = Role.USER

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


Handler = Callable[[CommandContext, tuple[str, ...]], Awaitable[str]]
"""Answers one call; an empty answer sends no reply (someone else reports the outcome)."""


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    summary: str
    usage: str
    handler: Handler
    admin_only: bool = False


class Registry:
    """Every command by name, in registration order."""

    def __init__(self, prefix: str = "/") -> None:
        self.prefix = prefix
        self._commands: dict[str, Command] = {}

    def add(self, command: Command) -> None:
        if command.name in self._commands:
            raise ValueError(f"command {command.name!r} is registered twice")
        self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def parse(self, text: str) -> Invocation | None:
        return parse(text, self.prefix)

    def help_text(self, *, admin: bool) -> str:
        lines = ["Commands:"]
        for command in self:
            if command.admin_only and not admin:
                continue
            lines.append(f"{self.prefix}{command.usage} — {command.summary}")
        return "\n".join(lines)

    def refusal(self, invocation: Invocation, role: Role) -> str | None:
        """Why `role` may not run `invocation`, or None when it may (or it is unknown)."""
        command = self.get(invocation.name)
        if command is not None and command.admin_only and role is not Role.ADMIN:
            return f"{self.prefix}{command.name} is for operators only."
        return None

    async def run(self, invocation: Invocation, context: CommandContext) -> str:
        """The reply to an invocation; unknown commands and bad arguments get a usage hint.

        Authorisation is checked here too, so no caller can run an admin command by
        forgetting `refusal`."""
        command = self.get(invocation.name)
        if command is None:
            return f"Unknown command {self.prefix}{invocation.name}. Try {self.prefix}help."
        refused = self.refusal(invocation, context.role)
        if refused is not None:
            return refused
        try:
            return await command.handler(context, invocation.args)
        except CommandError as exc:
            return f"{exc}\nUsage: {self.prefix}{exc.usage}"
