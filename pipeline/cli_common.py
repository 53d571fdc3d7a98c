"""What every entry point shares: ``--config``/``--set`` and turning user errors into one line."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Iterator

from datasets.reader import DataError
from fusionrec.typedconfig import ConfigError
from pipeline.config import ExperimentConfig, load_config


class UserError(Exception):
    """A problem with the user's input (config, data, paths): reported in one line, exit code 2."""


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value (repeatable), e.g. --set train.max_steps=10",
    )


def load_job_config(path: str, overrides: list[str]) -> ExperimentConfig:
    return load_config(path, overrides)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print config and data errors as one line prefixed ``error:`` and exit 2 instead of a traceback."""
    try:
        yield
    except (ConfigError, DataError, UserError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
