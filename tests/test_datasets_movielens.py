"""The MovieLens-100k converter: no leakage, the time split, labels, sequence order, bad input,
and configs/movielens.yaml against the project's own reader.

Most tests run on a small zip with the wheel's layout and the real file format, written here
(ties in timestamps included, the hard case for "strictly before"); the real wheel is used
where it is cached (``datasets.movielens.DEFAULT_CACHE`` or /tmp/recbole), never downloaded.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fusionrec.datasets.movielens import (
    DEFAULT_CACHE,
    DENSE,
    GROUP,
    MEMBER,
    PRIOR_LIKE,
    PRIOR_RATING,
    PRIOR_WEIGHT,
    SEQUENCES,
    WHEEL,
    convert,
    download_wheel,
    features_config,
    main,
)

REPO = Path(__file__).resolve().parents[1]
REAL = next((p for p in (DEFAULT_CACHE / WHEEL, Path("/tmp/recbole") / WHEEL) if p.is_file()), None)
LENS = {"watched_seq": 5, "liked_seq": 3, "disliked_seq": 2}  # short, so truncation happens


def write_zip(path: Path, inter: list[tuple], users: list[str] | None = None, items: list[str] | None = None,
              inter_header: str = "user_id:token\titem_id:token\trating:float\ttimestamp:float") -> Path:
    """A zip laid out like the recbole wheel's ml-100k example, in its tab-separated format."""
    users = users if users is not None else [
        "1\t24\tM\ttechnician\t85711", "2\t53\tF\tother\t94043", "3\t17\tM\twriter\tT8H1N",
        "4\t61\tF\teducator\t01002", "5\t33\tM\tother\t15213"]
    items = items if items is not None else [
        "1\tToy Story\t1995\tAnimation Children's Comedy", "2\tGoldenEye\t1995\tAction Adventure Thriller",
        "3\tFour Rooms\t1995\tThriller", "4\tCasablanca\t1942\tDrama Romance War", "5\tunkonwn\tunkonwn\tunknown",
        "6\tAlien\t1979\tAction Horror Sci-Fi", "7\tFargo\t1996\tCrime Drama Thriller", "8\tBabe\t1995\tComedy",
    ] + [f"{k}\tFilm {k}\t19{50 + k}\tDrama" for k in range(9, 15)]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MEMBER.format("inter"), inter_header + "\n" + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in inter))
        z.writestr(MEMBER.format("user"), "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                   + "".join(u + "\n" for u in users))
        z.writestr(MEMBER.format("item"), "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                   + "".join(i + "\n" for i in items))
    return path


def small_log() -> list[tuple]:
    """~70 ratings of 5 users on 14 items, each (user, item) once as in ML-100k; users rate in
    sessions, several ratings in one second, and users 1 and 2 start in the same second."""
    rng = np.random.default_rng(7)
    rows = []
    for u in range(1, 6):
        t = 880_000_000 + (0 if u <= 2 else int(rng.integers(0, 2_000_000)))
        for i in rng.permutation(np.arange(1, 15))[: int(rng.integers(9, 15))]:
            rows.append((u, int(i), int(rng.integers(1, 6)), t))
            t += int(rng.choice([0, 0, 1, 3, 40, 86_400]))
    rng.shuffle(rows)  # the file is not in time order
    return rows


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml")
    inter = small_log()
    wheel = write_zip(root / "small.zip", inter)
    out = root / "out"
    stats = convert(wheel, out, files=2, row_group_size=16, watched_len=LENS["watched_seq"],
                    liked_len=LENS["liked_seq"], disliked_len=LENS["disliked_seq"])
    return inter, out, stats


def read(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))])


def all_rows(out: Path) -> dict[str, list]:
    return pa.concat_tables([read(out / s) for s in ("train", "valid", "test")]).to_pydict()


def test_sequences_hold_only_the_past_most_recent_first(small):
    inter, out, _ = small
    cols = all_rows(out)
    assert len(cols["user_id"]) == len(inter)
    for n in range(len(cols["user_id"])):
        u, t = cols["user_id"][n], cols["timestamp"][n]
        past = sorted(((ts, i, r) for uu, i, r, ts in inter if uu == u and ts < t), reverse=True)
        keep = {"watched_seq": lambda r: True, "liked_seq": lambda r: r >= 4, "disliked_seq": lambda r: r <= 2}
        for seq in SEQUENCES:
            expected = [i for ts, i, r in past if keep[seq](r)][: LENS[seq]]
            assert cols[seq][n] == expected, (n, seq)
            when = {i: ts for uu, i, r, ts in inter if uu == u}
            assert all(when[i] < t for i in cols[seq][n])  # no element at or after the row's second
            stamps = [when[i] for i in cols[seq][n]]
            assert stamps == sorted(stamps, reverse=True)  # most recent first


def test_dense_features_count_only_earlier_ratings(small):
    inter, out, _ = small
    cols = all_rows(out)
    for n in range(len(cols["user_id"])):
        t = cols["timestamp"][n]
        for who, key in (("user", "user_id"), ("item", "item_id")):
            col = 0 if who == "user" else 1
            past = [r for row in inter if row[col] == cols[key][n] and row[3] < t for r in [row[2]]]
            assert cols[f"{who}_past_count"][n] == len(past)
            like = (sum(r >= 4 for r in past) + PRIOR_WEIGHT * PRIOR_LIKE) / (len(past) + PRIOR_WEIGHT)
            mean = (sum(past) + PRIOR_WEIGHT * PRIOR_RATING) / (len(past) + PRIOR_WEIGHT)
            assert cols[f"{who}_like_rate"][n] == pytest.approx(like, rel=1e-6)
            assert cols[f"{who}_mean_rating"][n] == pytest.approx(mean, rel=1e-6)


def test_labels_and_attributes(small):
    inter, out, stats = small
    cols = all_rows(out)
    rating = {(u, i, t): r for u, i, r, t in inter}
    for n in range(len(cols["user_id"])):
        r = rating[(cols["user_id"][n], cols["item_id"][n], cols["timestamp"][n])]
        assert cols["rating"][n] == r
        assert cols["like"][n] == float(r >= 4) and cols["love"][n] == float(r == 5)
        assert cols[GROUP][n] == cols["user_id"][n]
    vocab = json.loads((out / "vocab.json").read_text())
    by_user = dict(zip(cols["user_id"], zip(cols["age_group"], cols["zip_region"], cols["gender"])))
    assert by_user[3][0] == 0 and by_user[4][0] == 6  # age 17 → "<18", 61 → "56+"
    assert vocab["zip_region"][by_user[3][1]] == "other" and vocab["zip_region"][by_user[4][1]] == "0"
    genres = dict(zip(cols["item_id"], cols["genres"]))
    assert [vocab["genres"][g] for g in genres[1]] == ["Animation", "Children's", "Comedy"]
    decade = dict(zip(cols["item_id"], cols["release_decade"]))
    assert vocab["release_decade"][decade[4]] == "1940s" and vocab["release_decade"][decade[5]] == "unknown"
    assert stats["rows"]["train"] + stats["rows"]["valid"] + stats["rows"]["test"] == len(inter)


def test_split_is_by_time_and_rows_are_in_time_order(small):
    _, out, stats = small
    ts = {s: read(out / s).column("timestamp").to_numpy() for s in ("train", "valid", "test")}
    assert all(len(v) > 0 for v in ts.values())
    assert ts["train"].max() < ts["valid"].min() and ts["valid"].max() < ts["test"].min()
    assert ts["valid"].min() == stats["cut_timestamps"]["valid"] and ts["test"].min() == stats["cut_timestamps"]["test"]
    for v in ts.values():
        assert (np.diff(v) >= 0).all()
    assert len(list((out / "train").glob("*.parquet"))) == 2


def test_config_reads_the_output_with_the_projects_reader(small):
    from fusionrec.datasets.reader import ParquetReader, resolve_paths
    from fusionrec.pipeline.config import load_config

    _, out, _ = small
    cfg = load_config(REPO / "configs" / "movielens.yaml")
    assert cfg.model.bottom.type == "dtrn" and cfg.model.fusion.type == "adatt"
    table = read(out / "train")
    reader = ParquetReader(resolve_paths(str(out / "train")), cfg.schema, table.num_rows, drop_last=False)
    batch = next(iter(reader))
    assert batch.labels.shape == (table.num_rows, 2)
    assert not {k: v for k, v in reader.data_stats().items() if v and k not in ("empty_lists", "ids_truncated")}
    # newest_first: the reader hands the model each sequence oldest → newest
    seq = batch.sequence["watched_seq"].to_dense()
    rows = table.column("watched_seq").to_pylist()
    assert [x.tolist() for x in seq] == [r[::-1] for r in rows]


def test_real_wheel_matches_the_config(tmp_path):
    if REAL is None:
        pytest.skip(f"the recbole 1.2.1 wheel is not cached at {DEFAULT_CACHE / WHEEL} or /tmp/recbole")
    out = tmp_path / "ml"
    stats = convert(REAL, out)
    assert sum(stats["rows"].values()) == 100_000 and stats["rows"]["train"] == 79_999
    cfg = yaml.safe_load((REPO / "configs" / "movielens.yaml").read_text())
    written = features_config(stats)
    assert cfg["features"] == written["features"] and cfg["tasks"] == written["tasks"]
    test = read(out / "test").to_pydict()
    assert min(test["timestamp"]) >= max(read(out / "train").column("timestamp").to_pylist())
    assert set(DENSE) <= set(test)


def run_main(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"not a zip at all")
    code, err = run_main(["--wheel", str(junk), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "not a zip file" in err and str(junk) in err and len(err.splitlines()) == 1

    empty = tmp_path / "other.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("recbole/__init__.py", "")
    code, err = run_main(["--wheel", str(empty), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "ml-100k.inter" in err and len(err.splitlines()) == 1

    renamed = write_zip(tmp_path / "renamed.zip", [(1, 1, 4, 1)],
                        inter_header="user_id:token\titem:token\trating:float\ttimestamp:float")
    code, err = run_main(["--wheel", str(renamed), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "'item_id'" in err and len(err.splitlines()) == 1

    badrating = write_zip(tmp_path / "bad.zip", [(1, 1, 7, 1), (1, 2, 4, 2)])
    code, err = run_main(["--wheel", str(badrating), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "'rating'" in err

    afile = tmp_path / "afile"
    afile.write_text("x")
    good = write_zip(tmp_path / "good.zip", small_log())
    code, err = run_main(["--wheel", str(good), "--out", str(afile)], capsys)
    assert code == 2 and "--out is a file" in err and afile.read_text() == "x"

    code, err = run_main(["--wheel", str(tmp_path / "missing.whl"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "missing.whl" in err


def test_download_uses_the_cached_wheel_without_pip(tmp_path, monkeypatch):
    cached = write_zip(tmp_path / WHEEL, small_log())

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr("subprocess.run", no_pip)
    assert download_wheel(tmp_path) == cached
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        download_wheel(tmp_path / "file")


def test_the_fusionrec_command_dispatches_to_the_converter(capsys):
    from fusionrec import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["movielens", "--help"])
    assert exit_info.value.code == 0
    assert "--wheel" in capsys.readouterr().out
