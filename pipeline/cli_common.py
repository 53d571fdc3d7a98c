"""What every entry point shares: ``--config``/``--set`` and turning user errors into one line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Iterator

from datasets.reader import DataError
from fusionrec.typedconfig import ConfigError
from pipeline.checkpoint import CheckpointMismatchError
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


USER_ERRORS = (ConfigError, DataError, UserError, FileNotFoundError, CheckpointMismatchError)


def _rank_prefix() -> str:
    """``rank R/W: `` under torchrun with several ranks, else empty."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"rank {os.environ.get('RANK', '0')}/{world}: " if world > 1 else ""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Report failures with the rank they happened on.

    Config and data errors print one line ``error: [rank R/W: ]message`` and exit 2, without
    a traceback; any other exception prints ``rank R/W failed: Type: message`` and propagates
    (torchrun's ``record`` then shows its traceback in the failure summary).
    """
    try:
        yield
    except USER_ERRORS as err:
        print(f"error: {_rank_prefix()}{err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as err:
        print(f"{_rank_prefix() or 'rank 0/1: '}failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        raise
