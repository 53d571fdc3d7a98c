"""UCI Census-Income (KDD) → Parquet logs with the three tasks of the AdaTT paper.

    python -m fusionrec.datasets.census --src ../shared/data/census-income-kdd/census-income.test.gz --out data/census

reads the comma-separated file (42 columns, no header, values padded with a space, ``?`` for
unknown; gzip or plain) and writes

* ``OUT/{train,valid,test}/part-NNNNN.parquet``: a deterministic split by ``--seed`` (rows
  permuted, then ``--valid-fraction`` and ``--test-fraction`` of them set aside), the train
  split in ``--files`` files of ``--row-group-size`` rows per row group;
* one row per person with
  - three float32 labels: ``income`` (column 42 is ``50000+.``), ``never_married`` (column 8,
    marital status, is ``Never married``) and ``college`` (column 5, education, is at least
    some college) — the columns that define them (income, marital_status, education) are
    *not* written as inputs;
  - 7 numeric columns as float32 dense features (age, wage_per_hour, capital_gains,
    capital_losses, dividends_from_stocks, num_persons_worked_for_employer,
    weeks_worked_in_year);
  - the other 31 columns as int64 categorical ids: the index of the value in that column's
    sorted vocabulary of the whole file (``?`` is a value like any other), so a table of
    ``vocab_size`` rows holds every id without collisions;
  - ``instance_weight`` (column 25), the survey weight: carried as a float32 column but not a
    feature; set ``features.weight_column: instance_weight`` to weight the loss with it;
* ``OUT/stats.json``: rows per split, vocabulary sizes, label rates per split, and the dense
  normalisation statistics computed on the train split only (log1p for the four
  heavy-tailed money columns, then mean and std);
* ``OUT/vocab.json``: the vocabularies;
* ``OUT/features.yaml``: the ``features:`` and ``tasks:`` sections for an experiment YAML
  (``configs/census.yaml`` holds the ones for the default arguments).

The protocol is the MMoE paper's Census setup (Ma et al., KDD 2018): only the label-defining
columns are removed; correlated columns such as the household status (23, 24) stay inputs,
which is why ``never_married`` is nearly predictable from them and age (docs/data.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

__all__ = ["COLUMNS", "CATEGORICAL", "DENSE", "TASKS", "convert", "features_config"]

COLUMNS = [
    "age",
    "class_of_worker",
    "detailed_industry_recode",
    "detailed_occupation_recode",
    "education",
    "wage_per_hour",
    "enroll_in_edu_inst_last_wk",
    "marital_status",
    "major_industry_code",
    "major_occupation_code",
    "race",
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_stat",
    "region_of_previous_residence",
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",
    "migration_code_change_in_msa",
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",
    "income",
]
WEIGHT = "instance_weight"
DENSE = [
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
]
LOG_DENSE = {"wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks"}
COLLEGE = {
    "Associates degree-occup /vocational",
    "Associates degree-academic program",
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
    "Some college but no degree",
}
TASKS = ["income", "never_married", "college"]
LABEL_SOURCES = {"income": "income", "never_married": "marital_status", "college": "education"}
CATEGORICAL = [c for c in COLUMNS if c not in DENSE and c != WEIGHT and c not in LABEL_SOURCES.values()]
SPLITS = ("train", "valid", "test")


def read_source(src: str | os.PathLike) -> pa.Table:
    """The raw file as a table of trimmed strings, one column per name in :data:`COLUMNS`."""
    try:
        table = pacsv.read_csv(
            src,
            read_options=pacsv.ReadOptions(column_names=COLUMNS),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in COLUMNS}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{src}: not a Census-Income (KDD) file with {len(COLUMNS)} columns ({err})") from None
    return pa.table({c: pc.utf8_trim_whitespace(table.column(c)) for c in COLUMNS})


def _labels(raw: pa.Table) -> dict[str, np.ndarray]:
    def flag(mask: pa.ChunkedArray) -> np.ndarray:
        return mask.to_numpy().astype(np.float32)

    income = raw.column("income")
    values = set(pc.unique(income).to_pylist())
    if values - {"50000+.", "- 50000."}:
        raise ValueError(f"unexpected income values {sorted(values)}")
    return {
        "income": flag(pc.equal(income, "50000+.")),
        "never_married": flag(pc.equal(raw.column("marital_status"), "Never married")),
        "college": flag(pc.is_in(raw.column("education"), value_set=pa.array(sorted(COLLEGE)))),
    }


def _numbers(raw: pa.Table, column: str) -> np.ndarray:
    try:
        return raw.column(column).cast(pa.float64()).to_numpy()
    except pa.ArrowInvalid as err:
        raise ValueError(f"column {column!r} is not numeric ({err})") from None


def _transform(column: str, x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x)) if column in LOG_DENSE else x


def _split_indices(n: int, seed: int, valid_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    perm = np.random.default_rng([seed, 0xCE5505]).permutation(n)
    n_test, n_valid = round(n * test_fraction), round(n * valid_fraction)
    return {"test": perm[:n_test], "valid": perm[n_test : n_test + n_valid], "train": perm[n_test + n_valid :]}


def features_config(stats: dict, dim: int = 8) -> dict:
    """The ``features`` and ``tasks`` sections for an experiment YAML, from ``stats.json``."""
    return {
        "features": {
            "tables": [{"name": c, "num_embeddings": stats["vocab_sizes"][c], "dim": dim} for c in CATEGORICAL],
            "dense": list(DENSE),
            "normalization": {
                c: ({"log": True} if s["log"] else {}) | {"mean": s["mean"], "std": s["std"]}
                for c, s in stats["normalization"].items()
            },
            "sparse": [{"name": c, "table": c} for c in CATEGORICAL],
        },
        "tasks": [{"name": t, "type": "binary"} for t in TASKS],
    }


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    files: int = 4,
    row_group_size: int = 8192,
    dim: int = 8,
) -> dict:
    """Convert the file ``src`` into Parquet logs under ``out``; returns the stats written to
    ``out/stats.json``. Output is a function of the arguments and the file's bytes."""
    if not (0 < valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ValueError("valid_fraction and test_fraction must be in (0, 1) and sum to less than 1")
    if files < 1 or row_group_size < 1:
        raise ValueError("files and row_group_size must be at least 1")
    raw = read_source(src)
    n = raw.num_rows
    labels = _labels(raw)
    vocab = {c: sorted(pc.unique(raw.column(c)).to_pylist()) for c in CATEGORICAL}
    codes = {
        c: pc.index_in(raw.column(c), value_set=pa.array(vocab[c])).to_numpy().astype(np.int64) for c in CATEGORICAL
    }
    dense = {c: _numbers(raw, c) for c in DENSE}
    weight = _numbers(raw, WEIGHT).astype(np.float32)
    splits = _split_indices(n, seed, valid_fraction, test_fraction)

    normalization = {}
    for c in DENSE:
        x = _transform(c, dense[c][splits["train"]])
        std = float(x.std())
        normalization[c] = {
            "log": c in LOG_DENSE,
            "mean": round(float(x.mean()), 6),
            "std": round(std if std > 0 else 1.0, 6),
        }

    arrow_schema = pa.schema(
        [(c, pa.float32()) for c in DENSE]
        + [(c, pa.int64()) for c in CATEGORICAL]
        + [(t, pa.float32()) for t in TASKS]
        + [(WEIGHT, pa.float32())]
    )
    out = Path(out)
    written: dict[str, list[str]] = {}
    for split in SPLITS:
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("part-*.parquet"):
            stale.unlink()
        rows = splits[split]
        columns = {c: dense[c][rows].astype(np.float32) for c in DENSE}
        columns |= {c: codes[c][rows] for c in CATEGORICAL}
        columns |= {t: labels[t][rows] for t in TASKS}
        columns[WEIGHT] = weight[rows]
        table = pa.table(columns, schema=arrow_schema)
        parts = files if split == "train" else 1
        written[split] = []
        for i in range(parts):
            lo, hi = i * len(rows) // parts, (i + 1) * len(rows) // parts
            path = folder / f"part-{i:05d}.parquet"
            tmp = path.with_name(path.name + ".tmp")
            pq.write_table(table.slice(lo, hi - lo), tmp, row_group_size=row_group_size)
            os.replace(tmp, path)
            written[split].append(str(path))

    digest = hashlib.sha256(Path(src).read_bytes()).hexdigest()
    stats = {
        "source": os.path.basename(os.fspath(src)),
        "sha256": digest,
        "seed": seed,
        "fractions": {"valid": valid_fraction, "test": test_fraction},
        "rows": {split: len(splits[split]) for split in SPLITS},
        "vocab_sizes": {c: len(vocab[c]) for c in CATEGORICAL},
        "normalization": normalization,
        "positive_rate": {
            split: {t: round(float(labels[t][splits[split]].mean()), 6) for t in TASKS} for split in SPLITS
        },
        "files": written,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    (out / "features.yaml").write_text(
        "# written by python -m fusionrec.datasets.census; paste into an experiment YAML\n"
        + yaml.safe_dump(features_config(stats, dim), sort_keys=False, default_flow_style=None, width=110)
    )
    return stats


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusionrec.datasets.census", description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="census-income.test.gz (or .data.gz, or unzipped)")
    parser.add_argument("--out", required=True, help="output folder: train/, valid/, test/, stats.json, ...")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--files", type=int, default=4, help="train files (valid and test get one each)")
    parser.add_argument("--row-group-size", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=8, help="embedding dim in features.yaml")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        stats = convert(
            args.src,
            args.out,
            args.seed,
            args.valid_fraction,
            args.test_fraction,
            args.files,
            args.row_group_size,
            args.dim,
        )
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = stats["rows"]
    print(
        f"wrote {sum(rows.values())} rows ({rows['train']} train, {rows['valid']} valid, {rows['test']} test) "
        f"under {args.out} in {time.perf_counter() - start:.1f}s"
    )
    for t in TASKS:
        rates = " ".join(f"{s}={stats['positive_rate'][s][t]:.3f}" for s in SPLITS)
        print(f"  {t}: positive rate {rates}")
    print(f"  {len(CATEGORICAL)} categorical columns, {len(DENSE)} dense; stats in {Path(args.out) / 'stats.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
