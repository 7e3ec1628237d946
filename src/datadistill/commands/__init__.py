"""The command line: ``datadistill {distill,train-zoo,test,evaluate} ...``, and the original
flat form (``datadistill --mode distill_basic ...``, ``--mode train --phase test``,
``--phase test``) mapped onto them. The only place that turns errors into exit codes.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from .. import __version__
from ..errors import ConfigError, DatadistillError
from ..world import DEFAULT_TIMEOUT, DistributedError, World, start, stop
from . import distill, evaluate, test, train_zoo
from .flags import EXIT_USAGE

COMMANDS = {m.NAME: m for m in (distill, train_zoo, test, evaluate)}


class Session:
    """What a command leaves for ``main`` to clean up: its group of processes."""

    world: World = World()

    def join(self, args, config):
        """Join the group of processes the command was launched into (``--world_size``), set the
        process-wide switches; returns ``config`` on this process's device, and whether this
        process draws no progress bars (``--no_progress``, or not the main process)."""
        from ..runtime import apply_process_switches

        self.world, device = start(getattr(args, "world_size", None), config.device,
                                   getattr(args, "dist_timeout", DEFAULT_TIMEOUT))
        apply_process_switches()
        quiet = getattr(args, "no_progress", False) or not self.world.is_main
        return dataclasses.replace(config, device=device), quiet


def top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datadistill", description="Dataset distillation: a few synthetic images "
                                "that train a network. The original's flat flags (--mode, --phase) also work.")
    p.add_argument("--version", action="version", version=f"datadistill {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub.add_parser(name, help=module.HELP, add_help=False)
    return p


def _flag_value(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``; the last wins) and argv without it."""
    value, rest, i = None, [], 0
    while i < len(argv):
        word = argv[i]
        if word == flag:
            if i + 1 == len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"{flag} needs a value")
            value, i = argv[i + 1], i + 2
            continue
        if word.startswith(flag + "="):
            value, i = word.split("=", 1)[1], i + 1
            continue
        rest.append(word)
        i += 1
    return value, rest


def route(argv: list[str]) -> tuple[str, list[str]]:
    """(command, its arguments) for a subcommand line or the original's flat form."""
    if argv and argv[0] in COMMANDS:
        return argv[0], argv[1:]
    if argv and not argv[0].startswith("-"):  # the flat form is flags only
        raise DatadistillError(f"unknown command {argv[0]!r}; accepted: {', '.join(COMMANDS)}, or the original's "
                               f"flat flags (--mode ...)")
    mode, _ = _flag_value(argv, "--mode")
    if mode == "train":  # --mode train [--phase test]: a zoo
        return "train-zoo", _flag_value(argv, "--mode")[1]
    phase, rest = _flag_value(argv, "--phase")
    if phase == "test":
        return "test", rest
    if phase not in (None, "train"):
        raise DatadistillError(f"unknown --phase {phase!r}; accepted: train, test")
    return "distill", rest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # nothing to do is a usage error, as for any tool of subcommands
        sys.stderr.write(f"datadistill: error: a command is required; accepted: {', '.join(COMMANDS)}, or the "
                         f"original's flat flags (--mode ...); see `datadistill --help`\n")
        return EXIT_USAGE
    if argv[0] in ("-h", "--help", "--version"):
        try:
            top_parser().parse_args(argv)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else EXIT_USAGE
        return 0
    session = Session()
    name = None
    try:
        name, rest = route(argv)
        module = COMMANDS[name]
        try:
            args = module.build_parser().parse_args(rest)
        except SystemExit as e:  # --help (0) or a usage error, already printed in one line (2)
            return e.code if isinstance(e.code, int) else EXIT_USAGE
        return module.run(args, argv, session)
    except DatadistillError as e:
        _error(session.world, e)
        return EXIT_USAGE
    except (FloatingPointError, DistributedError) as e:  # not bad input, but no traceback either
        _error(session.world, e)
        return 1
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        asked = re.search(r"tried to allocate ([\d.]+ ?\w+)", str(e), re.I)
        _error(session.world, f"out of memory{f' (tried to allocate {asked[1]})' if asked else ''}: ask for "
                              f"fewer or smaller images, a smaller --batch_size, or fewer networks at once")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"datadistill: interrupted; {AFTER_INTERRUPT.get(name, 'nothing was written')}\n")
        return 130
    finally:
        stop(session.world)


# how each command carries on after an interrupt (the others write nothing until they finish)
AFTER_INTERRUPT = {"distill": "rerun with --resume to continue",
                   "train-zoo": "rerun the same command to continue (finished parts of the zoo are kept)"}


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: torch raises OutOfMemoryError on a GPU but a
    plain RuntimeError from its CPU allocator."""
    return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in str(error))


def _error(world: World, error: Exception | str) -> None:
    where = f"{world}: " if world.distributed and not str(error).startswith("rank ") else ""
    sys.stderr.write(f"datadistill: error: {where}{error}\n")


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
