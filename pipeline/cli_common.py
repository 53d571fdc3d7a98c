"""What every entry point shares: ``--config``/``--set``, and the check of an ``--out`` path."""

from __future__ import annotations

import argparse
from pathlib import Path

from fusionrec.errors import UserError


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value (repeatable), e.g. --set train.max_steps=10",
    )


def refuse_file_in_the_way(out: Path) -> None:
    """Stop, naming ``--out``, when a file stands where one of its parent directories must be."""
    blocking = next((p for p in out.absolute().parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"--out {out}: {blocking} is a file, not a directory")
