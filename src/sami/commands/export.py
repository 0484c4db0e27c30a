"""`sami export RUN OUT`: one checkpoint of a run as a clean model folder with a model card (and a GGUF with
`--gguf`); prints the folder and the command that uploads it. The flags are `ExportSettings`' fields."""

from __future__ import annotations

import argparse
from pathlib import Path

from sami.cli_settings import add_settings_arguments, settings_overrides, validate
from sami.export import ExportSettings, export_run, upload_command


def add_arguments(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("run_dir", metavar="RUN", help="a run folder written by `sami run` (e.g. runs/NAME)")
    parser.add_argument("out", metavar="OUT", help="the folder to write (refused if it exists, unless --overwrite)")
    add_settings_arguments(parser.add_argument_group("export"), ExportSettings, key="export")


def run(args: argparse.Namespace) -> int:

    settings = validate(ExportSettings, settings_overrides(args, "export"), source="flags")
    out = export_run(args.run_dir, args.out, settings)
    print(out)
    print("upload it to the Hugging Face Hub (after `hf auth login`):")
    print("  " + upload_command(out, settings.repo_id or f"YOUR-NAME/{Path(out).resolve().name}"))
    return 0
