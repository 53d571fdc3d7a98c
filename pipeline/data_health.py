"""Bad input data made visible while training, and a stop when there is too much of it.

The reader fills, clips, wraps or drops bad values by a documented policy and counts every
event (:mod:`datasets.convert`). Training sums the counters over the ranks at each log line,
prints the non-zero bad-value counters on rank 0's console with their rate per row read, and —
when ``data.max_bad_fraction`` is set — stops every rank with one line naming the counter, its
rate and the first file where it happened, once any bad-value counter's events per row read
pass that number. The rate is events per row: for an id-list feature one row can hold several
events, so a rate near or above 1 means (nearly) every row is affected.

One kind has a bound by default: a binary task whose labels fall outside [0, 1] in more than
``data.max_label_out_of_range_fraction`` of the rows (1%) is a config mistake (a rating or a
count declared binary), not dirty data; :func:`check_label_range` stops the run naming the
task, the column and the values seen. The informational counters (truncation to ``max_len``,
empty lists, rows dropped to keep the ranks in step) are expected and shown apart.
"""

from __future__ import annotations

from typing import Optional

import pyarrow.compute as pc
import pyarrow.parquet as pq
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
    """``data (N rows read, all ranks): counter=N (R/row), ...`` for the non-zero bad-value
    counters, or None when there are none. With ``everything`` (the end of a run) the line is
    always there, and the informational counters follow apart: ``...; expected: ...``."""
    rows = max(totals.get(ROWS, 0), 1)
    bad = bad_counters(totals)
    head = f"data ({totals.get(ROWS, 0):,} rows read, all ranks): "

    def fmt(counters: dict[str, int]) -> str:
        return ", ".join(f"{k}={v:,} ({v / rows:.3g}/row)" for k, v in counters.items())

    if not everything:
        return head + fmt(bad) if bad else None
    expected = {k: v for k, v in totals.items() if k in INFORMATIONAL_COUNTERS and v}
    line = head + (fmt(bad) if bad else "no bad values")
    return line + (f"; expected: {fmt(expected)}" if expected else "")


LABEL_OUT_OF_RANGE = "label_out_of_range_clipped"


def check_label_range(totals: dict[str, int], limit: Optional[float], reader: ParquetReader) -> None:
    """Raise :class:`DataError` on every rank when a binary task's labels were outside [0, 1] in
    more than ``limit`` of the rows read (collective: every rank calls it with the same summed
    ``totals``; the per-task counts are gathered only when some label was out of range)."""
    if limit is None or not totals.get(ROWS) or not totals.get(LABEL_OUT_OF_RANGE):
        return
    prefix = f"{LABEL_OUT_OF_RANGE}/"
    per_task: dict[str, int] = {}
    firsts: dict[str, str] = {}
    for stats, files in all_gather_objects(
        ({k: v for k, v in reader.data_stats(per_column=True).items() if k.startswith(prefix)}, reader.first_files())
    ):
        for key, value in stats.items():
            per_task[key[len(prefix):]] = per_task.get(key[len(prefix):], 0) + value
            if key in files:
                firsts.setdefault(key[len(prefix):], files[key])
    rows = totals[ROWS]
    over = sorted(((v / rows, t) for t, v in per_task.items() if v / rows > limit), reverse=True)
    if not over:
        return
    rate, task = over[0]
    first = firsts.get(task, "an unknown file")
    raise DataError(
        f"task {task!r} is binary but its label column {task!r} is outside [0, 1] in {rate:.1%} of the rows read "
        f"({per_task[task]:,} of {rows:,}, all ranks); {values_seen(first, task)}; declare it type: regression, "
        f"or fix the labels (data.max_label_out_of_range_fraction {limit:g})"
    )


def values_seen(path: str, column: str, most: int = 8) -> str:
    """``values seen in FILE: 1, 2, 3`` (or their range, when there are more than ``most``)."""
    try:
        values = pq.read_table(path, columns=[column]).column(0).drop_null()
    except (OSError, KeyError, ValueError):
        return f"first in {path}"
    unique = pc.unique(values).to_pylist()
    if len(unique) <= most:
        shown = ", ".join(f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in sorted(unique))
    else:
        low, high = pc.min_max(values).values()
        shown = f"{len(unique)} distinct, from {low.as_py():g} to {high.as_py():g}"
    return f"values seen in {path}: {shown}"


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
