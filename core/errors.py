"""User-facing errors: one home that every layer may import (no torch, no readers, no checkpoints).

An error of these kinds is the user's to fix (a config key, a file, a column, a checkpoint); an
entry point reports it as one line and exits 2 (:func:`exit_on_user_error`). Anything else is a
bug or an infrastructure failure and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


class UserError(Exception):
    """A problem with the user's input (arguments, paths, cluster size): one line, exit code 2."""


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the file (or ``--set`` argument) and the key."""


class DataError(UserError, ValueError):
    """A problem with the input files; the message names the file (and column)."""


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoint does not hold what the configured model expects; names what differs."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


def rank_prefix() -> str:
    """``rank R/W: `` under torchrun with several ranks, else empty."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"rank {os.environ.get('RANK', '0')}/{world}: " if world > 1 else ""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Report failures with the rank they happened on.

    User errors print one line ``error: [rank R/W: ]message`` and exit 2, without a traceback;
    any other exception prints ``rank R/W failed: Type: message`` and propagates (torchrun's
    ``record`` then shows its traceback in the failure summary).
    """
    try:
        yield
    except USER_ERRORS as err:
        print(f"error: {rank_prefix()}{err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as err:
        print(f"{rank_prefix() or 'rank 0/1: '}failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        raise
