"""The `stockade` command line. Heavy modules are imported inside each command, never at start."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError, SecretNotFound, StockadeError, VaultError
from gateway.roles import ROLES

if TYPE_CHECKING:
    from gateway.settings import Settings

EXIT_CONFIG = 2
EXIT_DEPENDENCY = 1
EXIT_USAGE = 2  # what argparse exits with on a bad command line

STDIN_LIMIT = 1024 * 1024
"""Bytes read from a piped value at most; more is refused, never silently cut."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stockade",
        description="A security-first chat-bot gateway: one sandboxed agent per user.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="settings file (default: $STOCKADE_CONFIG, ./stockade.toml, "
        "~/.config/stockade/stockade.toml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    init = commands.add_parser("init", help="write a commented starter settings file")
    init.add_argument("path", nargs="?", type=Path, default=Path("stockade.toml"))
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    commands.add_parser("up", help="run every role in this process (starts a private Redis)")

    run = commands.add_parser("run", help="run one role alone against a running Redis")
    run.add_argument("role", choices=ROLES)

    chat = commands.add_parser("chat", help="talk to a running Stockade from this terminal")
    chat.add_argument("--user", help="who you are in the console channel (default: login name)")

    commands.add_parser("config", help="check the settings and print them, secrets hidden")

    usage = commands.add_parser("usage", help="spending per window and model, with the caps")
    usage.add_argument(
        "user", nargs="?", help='an internal user id or "channel:platform-user"; none: everyone'
    )

    commands.add_parser(
        "status", help="roles up, bus lag, dead letters, agents and spend of a running Stockade"
    )

    image = commands.add_parser("image", help="the agent image")
    image_commands = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    image_commands.add_parser("build", help="build the agent image if it is missing (idempotent)")

    _add_vault_commands(commands)
    _add_audit_commands(commands)
    _add_access_commands(commands)
    return parser


def _add_vault_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vault = commands.add_parser("vault", help="the encrypted secrets the mesh gives to providers")
    actions = vault.add_subparsers(dest="vault_command", metavar="ACTION", required=True)
    for action, text in (
        ("set", "add a secret or replace its value"),
        ("rotate", "replace the value of an existing secret"),
    ):
        writer = actions.add_parser(
            action, help=f"{text}; the value is asked for on a terminal, else read from stdin"
        )
        writer.add_argument("name", metavar="NAME")
        # There is no value argument: one would stay in shell history and `ps`. Anything
        # after NAME lands here and is refused unrepeated; argparse's error would echo it.
        writer.add_argument("extra", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    remove = actions.add_parser("rm", help="delete a secret")
    remove.add_argument("name", metavar="NAME")
    actions.add_parser("list", help="names, dates and ages of the secrets, never their values")


def _add_access_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pair = commands.add_parser("pair", help="pairing requests of unknown senders")
    pair_actions = pair.add_subparsers(dest="pair_command", metavar="ACTION", required=True)
    pair_actions.add_parser("list", help="the requests waiting for approval")
    for action in ("approve", "deny"):
        chosen = pair_actions.add_parser(action, help=f"{action} the request with this code")
        chosen.add_argument("code", metavar="CODE")
    link = commands.add_parser(
        "link", help="make a platform identity one more name of an existing user"
    )
    link.add_argument("identity", metavar="CHANNEL:PLATFORM-ID")
    link.add_argument("user", metavar="USER", help='an internal id or "channel:platform-id"')


def _add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser("audit", help="the tamper-evident log of admin actions")
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    def count(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise argparse.ArgumentTypeError(f"not a positive whole number: {text[:20]!r}")
        return int(text)

    tail = actions.add_parser("tail", help="the last entries, oldest first")
    tail.add_argument("-n", type=count, default=20, metavar="N", help="how many (default: 20)")

    def pin(text: str) -> str:
        from gateway.audit import parse_pin

        try:
            return parse_pin(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc}: {text[:70]!r}") from None

    verify = actions.add_parser(
        "verify", help="check the hash chain; exit status 1 if the log was changed or cut"
    )
    verify.add_argument(
        "--pinned",
        type=pin,
        metavar="HASH",
        help="a head hash printed by an earlier verify and kept elsewhere: the log must "
        "still hold that entry (a log rewritten from the start fails)",
    )


def _configure_logging(verbose: bool, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # LiteLLM logs every call at INFO, with the model name and provider: noise in ours.
    logging.getLogger("LiteLLM").setLevel(max(level, logging.WARNING))


def _serve(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-running command on uvloop: its transports and scheduling, written in
    C, spend less CPU per message than asyncio's own loop (figures in bench/RESULTS.md)."""
    import uvloop

    uvloop.run(main)


def _progress_line(line: str) -> None:
    """Build progress: one rolling status line on a terminal, every line otherwise."""
    if sys.stderr.isatty():
        width = shutil.get_terminal_size().columns - 1
        sys.stderr.write("\r\x1b[K" + line[:width])
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "init":
        from gateway.starter import write_starter

        write_starter(args.path, force=args.force)
        print(f"wrote {args.path}")
        return 0

    from gateway import settings as settings_module

    settings = settings_module.load(args.config)
    if args.command == "config":
        print(settings.model_dump_json(indent=2))
        return 0

    if args.command == "vault":
        return _vault(args, settings)

    if args.command == "image":
        from gateway.supervisor import ensure_image

        tag = asyncio.run(
            ensure_image(settings.image, settings.docker, settings.data_dir, _progress_line)
        )
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print(f"agent image: {tag}")
        return 0

    if args.command == "audit":
        from gateway.audit import run_audit_command

        return run_audit_command(
            settings, args.audit_command, getattr(args, "n", 20), getattr(args, "pinned", None)
        )

    from gateway import app

    if args.command == "up":
        from gateway.vault import resolve_channel_credentials

        _configure_logging(args.verbose)
        # Read before Redis, Docker and the agent image start: a credential the vault
        # cannot give stops `up` at once, with its one line, not from inside a task group.
        _serve(app.serve(app.up(resolve_channel_credentials(settings))))
    elif args.command == "run":
        _configure_logging(args.verbose)
        _serve(app.serve(app.run_role(settings, args.role)))
    elif args.command == "chat":
        _configure_logging(args.verbose, quiet=True)
        _serve(app.serve(app.chat(settings, args.user)))
    elif args.command == "pair":
        _configure_logging(args.verbose, quiet=True)
        print(asyncio.run(app.pair(settings, args.pair_command, getattr(args, "code", None))))
    elif args.command == "link":
        _configure_logging(args.verbose, quiet=True)
        print(asyncio.run(app.link(settings, args.identity, args.user)))
    elif args.command == "usage":
        _configure_logging(args.verbose, quiet=True)
        print(asyncio.run(app.usage(settings, args.user)))
    elif args.command == "status":
        _configure_logging(args.verbose, quiet=True)
        print(asyncio.run(app.status(settings)))
    return 0


def _read_value(name: str) -> str:
    """The secret value: asked twice without echo on a terminal, else all of stdin."""
    if sys.stdin.isatty():
        import getpass

        try:
            value = getpass.getpass(f"value of {name}: ")
            again = getpass.getpass(f"value of {name} again: ")
        except EOFError:
            raise VaultError("no value given; nothing was changed") from None
        if value != again:
            raise VaultError("the two values differ; nothing was changed")
        return value
    data = sys.stdin.buffer.read(STDIN_LIMIT + 1)
    if len(data) > STDIN_LIMIT:
        raise VaultError("the value on stdin is too long; nothing was changed")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise VaultError("the value on stdin is not UTF-8 text; nothing was changed") from None


def _vault(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from gateway.vault import Vault, check_name, clean_value, render_listing

    action: str = args.vault_command
    if action in ("set", "rotate") and args.extra:
        print(
            f"stockade: vault {action} takes NAME only; the value is asked for, or read "
            "from stdin, never taken from the command line",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if action == "list":
        vault = Vault.from_settings(settings)
        entries = vault.entries()
        if entries:
            print("\n".join(render_listing(entries, datetime.now(UTC))))
        else:
            print(f"no secrets in {vault.store}")
        return 0

    name = check_name(args.name)
    if action == "rm":
        Vault.from_settings(settings).remove(name)
        print(f"removed secret {name!r}")
        return 0

    if action == "rotate":
        vault = Vault.from_settings(settings)
        if name not in vault:
            raise SecretNotFound(name)  # before a value is asked for; rotate() checks again
        vault.rotate(name, _read_value(name))
        print(f"rotated secret {name!r}")
        return 0

    # The value first: a refused or abandoned value must not leave a new key file behind.
    value = clean_value(_read_value(name))
    key_file = settings.vault_key_file()
    new_key = settings.vault.key is None and not key_file.exists()
    vault = Vault.from_settings(settings, create_key=True)
    existed = name in vault
    vault.set(name, value)
    print(f"{'replaced' if existed else 'added'} secret {name!r} in {vault.store}")
    if new_key:
        print(
            f"created the vault master key {key_file}; keep a copy somewhere safe, "
            "the secrets cannot be read without it",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"stockade: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StockadeError as exc:
        print(f"stockade: {exc}", file=sys.stderr)
        return EXIT_DEPENDENCY
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # `up` runs its roles in one task group: a role that cannot start (a platform
        # refusing its token) ends them all, and its error arrives wrapped.
        errors = _own_errors(group)
        if not errors:
            raise
        for text in dict.fromkeys(str(error) for error in errors):
            print(f"stockade: {text}", file=sys.stderr)
        if any(isinstance(error, ConfigError) for error in errors):
            return EXIT_CONFIG
        return EXIT_DEPENDENCY


def _own_errors(group: BaseExceptionGroup[BaseException]) -> list[StockadeError]:
    """Every error in `group` when all are Stockade's own; empty when any other is
    among them (a bug, whose traceback is wanted)."""
    found: list[StockadeError] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            inner = _own_errors(error)
            if not inner:
                return []
            found += inner
        elif isinstance(error, StockadeError):
            found.append(error)
        else:
            return []
    return found


if __name__ == "__main__":
    sys.exit(main())
