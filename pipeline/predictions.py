"""Per-row predictions as Parquet: what ``evaluate --predictions`` writes, one row per scored row.

Columns: ``row_id`` (the row's index in the eval files' order: files as resolved, rows in file
order), ``group_id`` (with a group column), ``label_<task>`` (when the logs have labels),
``prediction_<task>`` per task in config order, and ``weight``. One file per rank under torchrun (``OUT-rank{r}.parquet``).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fusionrec.pipeline.distributed import DistInfo


class PredictionWriter:
    """Streams ``row_id``, ``group_id`` (with a group column), ``label_<task>``,
    ``prediction_<task>`` and ``weight`` to a Parquet file, one row group per batch.

    ``row_id`` is the row's index in the eval files' order (files as resolved, rows in file order).
    ``labels=False`` leaves out the label columns (logs without labels).
    """

    def __init__(self, path: Path, task_names: list[str], first_row: int, labels: bool = True) -> None:
        self.path, self.tasks, self.next_row, self.labels = path, task_names, first_row, labels
        self.writer = None
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, batch, predictions) -> None:
        n = batch.batch_size
        columns = {"row_id": pa.array(range(self.next_row, self.next_row + n), pa.int64())}
        if batch.group_ids is not None:
            columns["group_id"] = pa.array(batch.group_ids.cpu().numpy())
        labels, preds = batch.labels.cpu().numpy(), predictions.float().cpu().numpy()
        for i, task in enumerate(self.tasks):
            if self.labels:
                columns[f"label_{task}"] = pa.array(labels[:, i])
            columns[f"prediction_{task}"] = pa.array(preds[:, i])
        columns["weight"] = pa.array(batch.weights.cpu().numpy())
        table = pa.table(columns)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)
        self.next_row += n

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def predictions_path(path: str, info: DistInfo) -> Path:
    p = Path(path)
    return p if info.world_size == 1 else p.with_name(f"{p.stem}-rank{info.rank}{p.suffix}")
