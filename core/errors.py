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


class CheckpointDamagedError(UserError):
    """A checkpoint's files are missing or truncated; the message names the file."""


class RunDirLockedError(UserError):
    """Another live job holds the run dir; the message names the run dir and the holder."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


def rank_prefix() -> str:
    """``rank R/W: `` under torchrun with several ranks, else empty."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"rank {os.environ.get('RANK', '0')}/{world}: " if world > 1 else ""


REPORT_DIR_ENV = "FUSIONREC_REPORT_DIR"


def report_to_launcher(name: str, line: str) -> None:
    """Leave ``line`` for the ``fusionrec train`` launcher (a file ``name`` in the directory it
    names in ``$FUSIONREC_REPORT_DIR``), which prints it once instead of torchrun's failure
    report; a no-op when no launcher started this process."""
    folder = os.environ.get(REPORT_DIR_ENV)
    if not folder:
        return
    tmp = os.path.join(folder, f".{name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(line + "\n")
    os.replace(tmp, os.path.join(folder, name))


def print_line(line: str) -> None:
    """``line`` and its newline to stderr in one write. Ranks share their launcher's stderr;
    ``print`` writes the text and the newline separately, so two ranks failing at once could
    tear each other's lines ("...load it on 1 rankerror: rank 0/2: ...")."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Report failures with the rank they happened on.

    User errors print one line ``error: [rank R/W: ]message`` and exit 2, without a traceback
    (and leave the line for the launcher, :func:`report_to_launcher`);
    any other exception prints ``rank R/W failed: Type: message`` and propagates (torchrun's
    ``record`` then shows its traceback in the failure summary).
    """
    try:
        yield
    except USER_ERRORS as err:
        line = f"error: {rank_prefix()}{err}"
        report_to_launcher(f"error-rank{os.environ.get('RANK', '0')}", line)
        print_line(line)
        sys.exit(2)
    except Exception as err:
        print_line(f"{rank_prefix() or 'rank 0/1: '}failed: {type(err).__name__}: {err}")
        raise
