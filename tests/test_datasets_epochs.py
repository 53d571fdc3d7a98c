"""Reader contract for the train loop: ranks × DataLoader workers read every row exactly once,
per-epoch shuffling is deterministic, and a resumed reader continues exactly after the last
consumed batch."""

from __future__ import annotations

import itertools
import json
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fusionrec.datasets.reader import DataError, ParquetReader, _Source, interleaved_counts, make_loader
from tests.test_datasets_reader import SCHEMA, make_rows, row_ids, write

SIZES = [301, 7, 0, 152, 40, 1, 123]  # very uneven files, one empty
GROUPS = [50, 3, 10, 64, 40, 1, 17]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("epochs")
    rng = np.random.default_rng(7)
    paths, start = [], 0
    for i, (n, g) in enumerate(zip(SIZES, GROUPS)):
        paths.append(str(write(folder / f"part-{i:05d}.parquet", make_rows(start, n, rng), g)))
        start += n
    return paths


def ids_of(batches) -> list[int]:
    return [i for b in batches for i in row_ids(b)]


def reader(files, batch_size=8, rank=0, world_size=1, **kw) -> ParquetReader:
    return ParquetReader(files, SCHEMA, batch_size, rank, world_size, **kw)


def same_batches(a, b) -> bool:
    """Batches equal in every tensor (ids, lengths, dense, labels, weights)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for kx, ky in ((x.sparse, y.sparse), (x.sequence, y.sequence)):
            if kx.keys() != ky.keys() or not torch.equal(kx.values(), ky.values()):
                return False
            if not torch.equal(kx.lengths(), ky.lengths()):
                return False
        for tx, ty in ((x.dense, y.dense), (x.labels, y.labels), (x.weights, y.weights)):
            if not torch.equal(tx, ty):
                return False
    return True


def test_interleaved_counts_inverts_round_robin():
    counts = [3, 3, 4, 0, 1]
    order = [w for t in range(max(counts)) for w in range(len(counts)) if counts[w] > t]
    for k in range(sum(counts) + 1):
        assert interleaved_counts(counts, k) == [order[:k].count(w) for w in range(len(counts))]


@pytest.mark.parametrize("shuffle, buffer", [(False, 0), (True, 0), (True, 40)])
def test_exactly_once_over_2_ranks_by_2_workers(files, shuffle, buffer):
    total = sum(SIZES)
    seen, steps, dropped = [], [], 0
    for rank in range(2):
        r = reader(files, 16, rank, 2, seed=3, shuffle=shuffle, shuffle_buffer_rows=buffer, num_workers=2)
        r.set_epoch(1)
        batches = list(make_loader(r))
        assert all(b.batch_size == 16 for b in batches)
        steps.append(len(batches))
        assert len(batches) == r.num_batches == (total // 2) // 16
        seen += ids_of(batches)
        assert r.data_stats()["rows_dropped_partial_batch"] == r.rows_dropped < 16 + 1
        dropped += r.rows_dropped
    assert steps[0] == steps[1]
    assert len(seen) == len(set(seen)) == total - dropped
    assert set(seen) <= set(range(total))


def test_dataloader_order_is_round_robin_over_worker_shares(files):
    r = reader(files, 8, rank=1, world_size=2, seed=1, shuffle=True, shuffle_buffer_rows=24, num_workers=3)
    r.set_epoch(2)
    got = list(make_loader(r))
    shares = []
    for w in range(3):
        lo, hi = w * r.num_batches // 3, (w + 1) * r.num_batches // 3
        shares.append(list(r._worker_batches(2, r._pass, lo, hi)))
    expected = [shares[w][t] for t in range(max(map(len, shares))) for w in range(3) if t < len(shares[w])]
    assert same_batches(got, expected)


def test_shuffle_is_deterministic_per_seed_and_epoch(files):
    def order(seed, epoch, buffer=0, shuffle=True):
        r = reader(files, 10, seed=seed, shuffle=shuffle, shuffle_buffer_rows=buffer, drop_last=False)
        r.set_epoch(epoch)
        return ids_of(r)

    plain = order(0, 0, shuffle=False)
    assert plain == sorted(plain)
    a = order(5, 0)
    assert a == order(5, 0) and sorted(a) != a
    assert a != order(5, 1) and a != order(6, 0)
    assert order(5, 0, shuffle=False) == order(6, 1, shuffle=False) == plain
    # without a buffer, rows stay in file order inside each row group
    runs = np.split(np.array(a), np.flatnonzero(np.diff(a) != 1) + 1)
    assert all(len(run) >= 1 for run in runs) and len(runs) < len(a) / 3
    # with a buffer, rows are permuted inside windows too
    b = order(5, 0, buffer=30)
    assert b == order(5, 0, buffer=30) and b != a and sorted(b) == sorted(a) == list(range(sum(SIZES)))
    assert np.mean(np.abs(np.diff(b)) == 1) < 0.2


def test_epochs_see_different_orders_but_the_same_rows_without_drop(files):
    r = reader(files, 1, seed=2, shuffle=True)
    first = ids_of(r)
    r.set_epoch(1)
    second = ids_of(r)
    assert first != second and sorted(first) == sorted(second) == list(range(sum(SIZES)))


@pytest.mark.parametrize(
    "shuffle, buffer, workers",
    [(False, 0, 0), (True, 0, 0), (True, 48, 0), (False, 0, 2), (True, 48, 2)],
)
def test_resume_yields_exactly_the_rest_of_the_epoch(files, shuffle, buffer, workers):
    kw = {"seed": 11, "shuffle": shuffle, "shuffle_buffer_rows": buffer, "num_workers": workers}
    full = reader(files, 12, rank=1, world_size=2, **kw)
    full.set_epoch(3)
    uninterrupted = list(make_loader(full))
    n = full.num_batches
    assert len(uninterrupted) == n > 10
    for k in sorted({1, 5, n // 2 + 1, n - 1}):
        state = json.loads(json.dumps(full.state_dict(epoch=3, batches_consumed=k)))  # what meta.json keeps
        resumed = reader(files, 12, rank=1, world_size=2, **kw)
        resumed.load_state_dict(state)
        loader = make_loader(resumed)
        assert len(loader) == n - k
        assert same_batches(list(loader), uninterrupted[k:]), k


def test_state_is_the_same_on_every_rank_and_restores_every_rank(files):
    kw = {"seed": 4, "shuffle": True, "shuffle_buffer_rows": 32}
    readers = [reader(files, 8, rank, 2, **kw) for rank in range(2)]
    states = [r.state_dict(epoch=1, batches_consumed=7) for r in readers]
    strip = [{k: v for k, v in s.items() if k != "workers"} for s in states]
    assert strip[0] == strip[1]
    for rank in range(2):
        full = reader(files, 8, rank, 2, **kw)
        full.set_epoch(1)
        expected = list(full)[7:]
        resumed = reader(files, 8, rank, 2, **kw)
        resumed.load_state_dict(states[0])  # rank 0's copy, as meta.json holds it
        assert same_batches(list(resumed), expected)


def test_resume_seeks_instead_of_rereading(files, monkeypatch):
    """Resumed without a shuffle buffer, the reader decodes only row groups that hold rows it
    yields (plus the one the next batch starts in)."""
    decoded = []
    original = _Source.group

    def counting(self, g):
        if self.last is None or self.last[0] != g:
            decoded.append(int(self.reader._group_rows[g]))
        return original(self, g)

    monkeypatch.setattr(_Source, "group", counting)
    r = reader(files, 10, seed=0, shuffle=True)
    k = r.num_batches - 3
    r.set_epoch(0, start_batch=k)
    batches = list(r)
    assert len(batches) == 3
    assert sum(decoded) <= 3 * 10 + max(GROUPS) * 2


def test_finished_epoch_state_points_at_the_next_epoch(files):
    r = reader(files, 8)
    state = r.state_dict(epoch=2, batches_consumed=r.num_batches)
    assert (state["epoch"], state["batches_consumed"]) == (3, 0)
    r.load_state_dict(state)
    assert r.epoch == 3 and len(r) == r.num_batches


def test_state_dict_defaults_to_batches_handed_out(files):
    r = reader(files, 8)
    it = iter(r)
    for _ in range(4):
        next(it)
    assert r.state_dict()["batches_consumed"] == 4
    workers = r.state_dict()["workers"]
    assert workers[0]["batches_consumed"] == 4 and workers[0]["file"].endswith("part-00000.parquet")
    assert workers[0]["row"] == 32


def test_resume_inside_an_epoch_refuses_another_epoch_order(files):
    state = reader(files, 8, 0, 2, seed=1, shuffle=True, num_workers=2).state_dict(epoch=0, batches_consumed=3)
    for other, what in [
        (reader(files, 8, 0, 2, seed=2, shuffle=True, num_workers=2), "seed"),
        (reader(files, 8, 0, 2, seed=1, shuffle=False, num_workers=2), "shuffle"),
        (reader(files, 8, 0, 2, seed=1, shuffle=True, shuffle_buffer_rows=16, num_workers=2), "shuffle_buffer_rows"),
        (reader(files[:-1], 8, 0, 2, seed=1, shuffle=True, num_workers=2), "total_rows"),
    ]:
        with pytest.raises(DataError, match=what):
            other.load_state_dict(state)
    # at an epoch boundary any reader may take over
    boundary = dict(state, batches_consumed=0)
    other = reader(files, 16, 0, 4)
    other.load_state_dict(boundary)
    assert other.epoch == 0 and len(other) == other.num_batches == other.batches_per_epoch
    assert other.resume_note is None


def test_worker_errors_name_the_file(tmp_path):
    rows = {k: v * 50 for k, v in make_rows(0, 20, np.random.default_rng(4), nulls=False).items()}
    rows["row_id"] = list(range(1000))
    good = write(tmp_path / "a.parquet", rows, 1000)
    bad = write(tmp_path / "rot.parquet", rows, 1000)
    data = bytearray(bad.read_bytes())
    data[100:6000] = b"\xab" * 5900  # footer intact, pages garbage
    bad.write_bytes(bytes(data))
    r = ParquetReader([str(good), str(bad)], SCHEMA, 100, num_workers=2)
    with pytest.raises(DataError) as err:
        list(make_loader(r))
    message = str(err.value)
    assert message.startswith(str(bad)) and "cannot read row group 0" in message
    assert "Traceback" not in message


def test_workers_report_the_same_counters_as_one_process(files):
    one = reader(files, 8, drop_last=False)
    list(make_loader(one))
    two = reader(files, 8, drop_last=False, num_workers=2)
    list(make_loader(two))
    assert one.data_stats(per_column=True) == two.data_stats(per_column=True)
    assert one.data_stats()["null_dense_filled"] > 0


def test_drop_last_false_with_workers_reads_every_row(files):
    seen = []
    for rank in range(2):
        r = reader(files, 16, rank, 2, drop_last=False, num_workers=2, shuffle=True, shuffle_buffer_rows=32)
        seen += ids_of(make_loader(r))
    assert sorted(seen) == list(range(sum(SIZES)))


def test_batch_extras_survive_to_and_pickling(tmp_path):
    import pickle

    table = pa.table({"u": pa.array(["a", None, "b"]), "x": pa.array([1, 2, 3]), "y": pa.array([0.0, 1.0, 0.0])})
    pq.write_table(table, tmp_path / "t.parquet")
    from fusionrec.datasets.schema import FeatureSchema, Schema, SparseFeature, TableConfig, TaskConfig

    schema = Schema(
        FeatureSchema(tables=[TableConfig("t", 5, 2)], sparse=[SparseFeature("x", "t")], group_column="u"),
        [TaskConfig("y")],
    )
    (batch,) = ParquetReader(str(tmp_path), schema, 3)
    assert batch.group_ids.tolist()[1] == -1 and batch.stats == {"null_group_ids/u": 1}
    for other in (batch.to(torch.device("cpu")), pickle.loads(pickle.dumps(batch))):
        assert torch.equal(other.group_ids, batch.group_ids) and other.stats == batch.stats


def test_next_worker_continues_the_round_robin():
    from fusionrec.datasets.reader import next_worker

    counts = [3, 3, 4, 0, 1]
    order = [w for t in range(max(counts)) for w in range(len(counts)) if counts[w] > t]
    for k in range(sum(counts)):
        assert next_worker(counts, interleaved_counts(counts, k)) == order[k]


def run_layout(files, layout, kw, start, k=None):
    """Read a pass on every rank of ``layout`` = (world size, workers, batch size), from
    ``start`` (a saved state, or an epoch number for its beginning), ``k`` batches per rank
    (None: all of them). Returns (the rows read, rank 0's state after them, rows the pass drops)."""
    world, workers, batch = layout
    rows, state, dropped = [], None, 0
    for rank in range(world):
        r = reader(files, batch, rank, world, num_workers=workers, **kw)
        if isinstance(start, int):
            r.set_epoch(start)
        else:
            r.load_state_dict(start)
        got = list(itertools.islice(make_loader(r), k))
        assert k is None or len(got) == k
        rows += ids_of(got)
        if rank == 0:
            state = json.loads(json.dumps(r.state_dict(batches_consumed=len(got))))
            dropped = r.total_rows_dropped
    return rows, state, dropped


@pytest.mark.parametrize(
    "before, after, kw",
    [
        ((2, 0, 12), (1, 0, 12), {}),
        ((1, 0, 12), (2, 2, 12), {"seed": 3, "shuffle": True, "shuffle_buffer_rows": 40}),
        ((2, 2, 16), (3, 0, 8), {"seed": 5, "shuffle": True}),
    ],
)
def test_resume_on_another_layout_reads_every_row_once(files, before, after, kw):
    """Stopped mid-epoch on one (world size, workers, batch size) and resumed on another, the
    epoch's rows are each trained once: the resumed pass reads exactly the rows the first did
    not, except the fewer than ``batch + 1`` per rank its own drop_last leaves out."""
    total = sum(SIZES)
    first, state, _ = run_layout(files, before, kw, 2, k=5)
    assert state["rows_remaining"] == total - len(first) and state["epoch"] == 2
    rest, _, dropped = run_layout(files, after, kw, state)
    assert len(set(first)) == len(first) and len(set(rest)) == len(rest)
    assert not set(first) & set(rest)
    assert len(first) + len(rest) + dropped == total and dropped < after[0] * (after[2] + 1)
    assert set(first) | set(rest) <= set(range(total))


def test_resume_chain_over_three_layouts_and_exactly_within_one(files):
    kw = {"seed": 9, "shuffle": True, "shuffle_buffer_rows": 24}
    total = sum(SIZES)
    a, state, _ = run_layout(files, (2, 0, 12), kw, 1, k=5)
    b, state, _ = run_layout(files, (1, 0, 12), kw, state, k=7)
    assert len(state["segments"]) > 1 and state["rows_remaining"] == total - len(a) - len(b)
    # within one layout, a re-split pass resumes exactly where it stopped
    whole = reader(files, 12, **kw)
    whole.load_state_dict(run_layout(files, (2, 0, 12), kw, 1, k=5)[1])
    assert "world_size 2 -> 1" in whole.resume_note
    uninterrupted = list(whole)
    again = reader(files, 12, **kw)
    again.load_state_dict(state)
    assert again.resume_note is None and same_batches(list(again), uninterrupted[7:])
    c, end, dropped = run_layout(files, (2, 2, 10), kw, state)
    every = a + b + c
    assert len(every) == len(set(every)) and len(every) + dropped == total
    assert (end["epoch"], end["batches_consumed"], end["segments"]) == (2, 0, [[0, total]])


def test_state_of_a_version_1_reader_still_resumes(files):
    """Without a shuffle buffer, a version-1 position (no segments) means the same rows."""
    full = reader(files, 12, 1, 2, seed=2, shuffle=True)
    full.set_epoch(1)
    expected = list(full)[4:]
    old = {k: v for k, v in full.state_dict(1, 4).items() if k not in ("segments", "rows_remaining")}
    old["version"] = 1
    resumed = reader(files, 12, 1, 2, seed=2, shuffle=True)
    resumed.load_state_dict(old)
    assert same_batches(list(resumed), expected)
    buffered = reader(files, 12, 1, 2, seed=2, shuffle=True, shuffle_buffer_rows=24)
    with pytest.raises(DataError, match="version 1"):
        buffered.load_state_dict(dict(old, shuffle_buffer_rows=24, fingerprint=buffered.state_dict()["fingerprint"]))
