"""Bad input data made visible while training, and a stop when there is too much of it.

The reader fills, clips, wraps or drops bad values by a documented policy and counts every
event (:mod:`datasets.convert`). Training sums the counters over the ranks at each log line,
prints the non-zero bad-value counters on rank 0's console with their rate per row read, and —
when ``data.max_bad_fraction`` is set — stops every rank with one line naming the counter, its
rate and the first file where it happened, once any bad-value counter's events per row read
pass that number. The rate is events per row: for an id-list feature one row can hold several
events, so a rate near or above 1 means (nearly) every row is affected.
"""

from __future__ import annotations

from typing import Optional

import torch

from fusionrec.datasets.convert import COUNTERS, INFORMATIONAL_COUNTERS
from fusionrec.datasets.reader import ParquetReader
from fusionrec.errors import DataError
from fusionrec.pipeline.distributed import all_gather_objects, all_reduce

ROWS = "rows_read"


def gather_counters(reader: ParquetReader, device: torch.device) -> dict[str, int]:
    """The reader's counters and ``rows_read``, summed over all ranks (collective)."""
    stats = reader.data_stats()
    keys = sorted(stats)
    values = all_reduce(torch.tensor([stats[k] for k in keys] + [reader.rows_read], dtype=torch.float64, device=device))
    return {k: int(v) for k, v in zip(keys + [ROWS], values.tolist())}


def bad_counters(totals: dict[str, int]) -> dict[str, int]:
    """The non-zero counters that are bad values (not :data:`INFORMATIONAL_COUNTERS`)."""
    return {k: v for k, v in totals.items() if k in COUNTERS and k not in INFORMATIONAL_COUNTERS and v}


def console_line(totals: dict[str, int], everything: bool = False) -> Optional[str]:
    """``data: counter=N (R/row), ...`` for the non-zero bad-value counters (all non-zero
    counters when ``everything``), or None when there are none."""
    rows = max(totals.get(ROWS, 0), 1)
    shown = {k: v for k, v in totals.items() if k in COUNTERS and v} if everything else bad_counters(totals)
    if not shown:
        return None
    parts = [f"{k}={v:,} ({v / rows:.3g}/row)" for k, v in shown.items()]
    return f"data ({totals.get(ROWS, 0):,} rows read, all ranks): " + ", ".join(parts)


def check_bad_fraction(totals: dict[str, int], limit: Optional[float], reader: ParquetReader) -> None:
    """Raise :class:`DataError` on every rank when a bad-value counter's events per row read
    pass ``limit`` (collective: every rank calls it with the same summed ``totals``)."""
    if limit is None or not totals.get(ROWS):
        return
    rows = totals[ROWS]
    over = [(v / rows, k) for k, v in bad_counters(totals).items() if v / rows > limit]
    if not over:
        return
    rate, counter = max(over)
    firsts = [files.get(counter) for files in all_gather_objects(reader.first_files())]
    first = next((f for f in firsts if f), "an unknown file")
    raise DataError(
        f"data.max_bad_fraction {limit:g} exceeded: {counter} at {rate:.3g} events per row read "
        f"({totals[counter]:,} in {rows:,} rows, all ranks), first in {first}; "
        "fix the data, or raise data.max_bad_fraction (docs/reliability.md)"
    )
