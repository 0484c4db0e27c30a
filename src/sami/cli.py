"""The `sami` command. Thin: each subcommand lives in `sami.commands.<name>` and is imported only when used,
so `sami --help` stays fast (no torch import)."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from sami.errors import SamiInputError
from sami.launch import ERROR_FILE_ENV

# OSErrors that say what is wrong with the machine or a path (printed as one line, exit 2, like bad input).
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOENT,
}

# name -> (module, one-line help). Each module defines `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("sami.commands.run", "run the whole iterative SAMI experiment from a config (default: the CPU demo)"),
    "config": ("sami.commands.config", "show the resolved config of a run"),
    "plan": ("sami.commands.plan", "estimate memory per device and time of every stage of a run (no weights)"),
    "principles": ("sami.commands.principles", "write principles and antitheses with an instruction-tuned model"),
    "generate": ("sami.commands.generate", "self-generate training samples (samples.jsonl)"),
    "train": ("sami.commands.train", "train a model with the SAMI objective on samples.jsonl"),
    "evaluate": ("sami.commands.evaluate", "compare a model against a baseline: win rates, MI, lengths"),
    "winrate": ("sami.commands.winrate", "summarise judgments.jsonl into win rates"),
    "check": ("sami.commands.check", "score a responses file against a constitution's principle checks"),
    "benchmark": ("sami.commands.benchmark", "score a model or a responses file on IFEval (judge-free benchmark)"),
    "report": ("sami.commands.report", "build the HTML report of a run folder"),
    "export": ("sami.commands.export", "export a run's checkpoint as a model folder with a model card (and GGUF)"),
    "stage": ("sami.commands.stage", "run one stage of a run folder (what `sami run` starts under accelerate launch)"),
}


def _load(name: str):
    module_name, _ = COMMANDS[name]
    return importlib.import_module(module_name)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sami", description="Self-Supervised Alignment with Mutual Information.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen command's module is imported; the others are listed by their help line.
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _load(name).add_arguments(p)
    return parser


def input_error(command: str, message: str) -> int:
    """Say an input error in one line and return exit status 2. A child process that `sami run` started
    (`SAMI_STAGE_ERROR_FILE` set) hands the message to its parent instead, which says it once."""
    error_file = os.environ.get(ERROR_FILE_ENV)
    if error_file:
        with open(error_file, "w", encoding="utf-8") as f:
            f.write(message)
    else:
        print(f"sami {command}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sami` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Quiet library chatter (per-load progress bars, advisory warnings); sami draws its own progress bars.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Idle OpenMP threads sleep instead of spinning: the same speed on an idle machine, and 2-5x faster CPU
    # generation when another process shares the cores (spinning threads then wait on each other).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # one line per HTTP request is noise next to the progress bars
        for name in ("httpx", "openai", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(_load(args.command).run(args) or 0)
    except SamiInputError as e:
        return input_error(args.command, str(e))
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS or args.verbose:
            raise
        # the machine, not sami: a full disk, a read-only or foreign folder, a path that is a file
        where = f"{e.filename}: " if e.filename else ""
        return input_error(args.command, f"{where}{e.strerror or e}")
    except UnicodeDecodeError as e:  # a read that did not go through sami.io.read_text (which names the file)
        if args.verbose:
            raise
        return input_error(args.command, f"an input file is not UTF-8 text ({e.reason} at byte {e.start})")
    except KeyboardInterrupt:
        print(f"sami {args.command}: interrupted; finished work is saved, rerun to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
