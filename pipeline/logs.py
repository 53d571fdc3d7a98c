"""Console and JSONL logging for jobs; quiets third-party chatter that users cannot act on."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO


def quiet_third_party() -> None:
    """Silence warnings from torch/torchrec internals that say nothing about the user's job."""
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(torch|torchrec|fbgemm_gpu)(\.|$)")
    warnings.filterwarnings("ignore", message=r".*HeuristicalStorageReservation.*")
    for name in ("torchrec", "torch.distributed", "torch.fx", "fbgemm_gpu"):
        logging.getLogger(name).setLevel(logging.ERROR)


def say(message: str, *, enabled: bool = True, stream: TextIO = sys.stdout) -> None:
    """Print one line (rank 0 passes enabled=True; other ranks stay quiet)."""
    if enabled:
        print(message, file=stream, flush=True)


class JsonlLog:
    """Appends one JSON object per line to ``path`` (rank 0 only)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
