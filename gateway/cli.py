"""The `stockade` command line. Heavy modules are imported inside each command, never at start."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import ConfigError, StockadeError
from gateway.roles import ROLES

EXIT_CONFIG = 2
EXIT_DEPENDENCY = 1


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

    image = commands.add_parser("image", help="the agent image")
    image_commands = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    image_commands.add_parser("build", help="build the agent image if it is missing (idempotent)")
    return parser


def _configure_logging(verbose: bool, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # LiteLLM logs every call at INFO, with the model name and provider: noise in ours.
    logging.getLogger("LiteLLM").setLevel(max(level, logging.WARNING))


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

    if args.command == "image":
        from gateway.supervisor import ensure_image

        tag = asyncio.run(
            ensure_image(settings.image, settings.docker, settings.data_dir, _progress_line)
        )
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print(f"agent image: {tag}")
        return 0

    from gateway import app

    if args.command == "up":
        _configure_logging(args.verbose)
        asyncio.run(app.serve(app.up(settings)))
    elif args.command == "run":
        _configure_logging(args.verbose)
        asyncio.run(app.serve(app.run_role(settings, args.role)))
    elif args.command == "chat":
        _configure_logging(args.verbose, quiet=True)
        asyncio.run(app.serve(app.chat(settings, args.user)))
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


if __name__ == "__main__":
    sys.exit(main())
