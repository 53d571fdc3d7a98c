"""Score Parquet logs with an exported model alone: no config, no checkpoint.

    python -m fusionrec.pipeline.predict --model exports/demo-int8 \\
        --data 'data/demo/eval/*.parquet' --out runs/demo/pred-int8.parquet

Reads only the columns the model's manifest names, through the same reader and bad-value
policies as training, and writes the columns ``evaluate --predictions`` writes (``row_id``,
``group_id``, ``label_<task>``, ``prediction_<task>``, ``weight``; see
``pipeline.predictions``) in the files' row order, so the two files compare row by row. Logs
without any task label column (traffic to score) are scored too; their output has no
``label_<task>`` columns. With
``--num-workers N`` the reader's N DataLoader workers each take a contiguous share of the
batches; each share is written to its own part file and the parts are joined in order.
The output is written aside and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from fusionrec.datasets.convert import INFORMATIONAL_COUNTERS
from fusionrec.datasets.paths import open_parquet
from fusionrec.datasets.reader import ParquetReader, _split, make_loader, next_worker, resolve_paths
from fusionrec.datasets.schema import Schema
from fusionrec.errors import UserError, exit_on_user_error
from fusionrec.pipeline import artifact
from fusionrec.pipeline.binding import check_id_types
from fusionrec.pipeline.cli_common import refuse_file_in_the_way
from fusionrec.pipeline.data_health import bad_counters
from fusionrec.pipeline.logs import ProgressBar, quiet_third_party, say
from fusionrec.pipeline.predictions import PredictionWriter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fusionrec.pipeline.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a directory written by python -m fusionrec.pipeline.export")
    parser.add_argument("--data", required=True, help="Parquet logs: directory, glob or file")
    parser.add_argument("--out", required=True, help="the predictions Parquet file to write")
    parser.add_argument("--batch-size", type=int, default=512, help="rows per forward (default 512)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes reading the logs (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser.parse_args(argv)


def _join_parts(parts: list[Path], out: Path) -> None:
    """Concatenate Parquet part files (same schema) into ``out``, row group by row group."""
    writer = None
    try:
        for part in parts:
            if not part.exists():
                continue
            reader = pq.ParquetFile(part)
            for g in range(reader.num_row_groups):
                table = reader.read_row_group(g)
                if writer is None:
                    writer = pq.ParquetWriter(out, table.schema)
                writer.write_table(table)
            reader.close()
    finally:
        if writer is not None:
            writer.close()


def has_labels(path: str, schema: Schema) -> bool:
    """Whether the logs (judged by their first file) carry task labels: False when none of
    the label columns is there; a file with only some of them is read with labels, so the
    reader names the missing one."""
    pf = open_parquet(path)
    try:
        names = set(pf.schema_arrow.names)
    finally:
        pf.close()
    return any(task in names for task in schema.task_names)


def check_writable(out: Path) -> None:
    """Stop, naming ``--out``, unless a file can be written there (its parent made if need be)."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; name the Parquet file to write")
    refuse_file_in_the_way(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".tmp-{out.name}-{os.getpid()}-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--out {out}: cannot write there ({err.strerror or err})") from None


@torch.no_grad()
def predict(model_dir: str, data: str, out: Path, batch_size: int, num_workers: int, progress: bool = True) -> dict:
    """Score every row of ``data`` with the model in ``model_dir`` and write ``out``.

    Returns ``{"rows", "seconds", "rows_per_s", "labels", "data_stats"}``."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if num_workers < 0:
        raise UserError(f"--num-workers {num_workers}: must be >= 0")
    out = Path(out).absolute()
    check_writable(out)  # before any work
    model, manifest = artifact.load_model(model_dir)
    schema = artifact.manifest_schema(manifest)
    names = [i["name"] for i in manifest["inputs"]]
    files = resolve_paths(data)
    labels = has_labels(files[0], schema)
    reader = ParquetReader(files, schema, batch_size, drop_last=False, num_workers=num_workers, labels=labels)
    # String ids where the model was trained on integer ones (or the reverse) would be scored
    # against rows they were never trained on.
    check_id_types(f"the model in {model_dir}", manifest.get("id_types"), reader.id_types(), reader.paths[0])
    shares = max(1, num_workers)
    counts = [b - a for a, b in (_split(reader.num_batches, shares, i) for i in range(shares))]
    firsts = [reader.first_row + _split(reader.num_batches, shares, i)[0] * batch_size for i in range(shares)]

    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    parts = [tmp / f"part-{i:04d}.parquet" for i in range(shares)]
    writers = [PredictionWriter(p, schema.task_names, first, labels) for p, first in zip(parts, firsts)]
    bar = ProgressBar(reader.num_batches, 0, enabled=progress)
    started, rows = time.perf_counter(), 0
    taken = [0] * shares
    try:
        try:
            for batch in make_loader(reader, pin_memory=False):
                # A DataLoader hands out its workers' batches round-robin; worker w reads share w.
                share = next_worker(counts, taken)
                taken[share] += 1
                predictions = model(*artifact.batch_inputs(batch, names))
                writers[share](batch, predictions)
                rows += batch.batch_size
                bar.advance()
        finally:
            for w in writers:
                w.close()
            bar.close()
        seconds = time.perf_counter() - started
        if len(parts) == 1:
            if parts[0].exists():
                os.replace(parts[0], out)
            else:
                raise UserError(f"--data {data!r}: no rows to score")
        else:
            joined = tmp / "joined.parquet"
            _join_parts(parts, joined)
            if not joined.exists():
                raise UserError(f"--data {data!r}: no rows to score")
            os.replace(joined, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / max(seconds, 1e-9), "labels": labels,
            "data_stats": reader.data_stats()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    args = parse_args(argv)
    with exit_on_user_error():
        if args.threads:
            torch.set_num_threads(args.threads)
        result = predict(args.model, args.data, Path(args.out), args.batch_size, args.num_workers)
        say(f"scored {result['rows']} rows in {result['seconds']:.1f} s ({result['rows_per_s']:,.0f} rows/s); "
            f"wrote {args.out}")
        stats = {k: v for k, v in result["data_stats"].items() if v}
        bad = bad_counters(stats)
        expected = {k: v for k, v in stats.items() if k in INFORMATIONAL_COUNTERS}
        for title, counters in (("bad values", bad), ("expected", expected)):
            if counters:
                say(f"{title}: " + ", ".join(f"{k}={v:,}" for k, v in sorted(counters.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
