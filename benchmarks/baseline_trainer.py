"""A plain PyTorch trainer for the throughput benchmark: fusionrec's model math without TorchRec.

    python benchmarks/baseline_trainer.py --config configs/demo.yaml --batch-size 512 \
        --warmup 20 --steps 100 --threads 2 --json OUT.json

One process, no process group. The dense modules (DTRN or shared bottom, AdaTT or any fusion,
towers, loss) are fusionrec's own, built by ``models.build_model`` (its TorchRec tables stay on
the meta device and are never used); the embedding tables are replaced by

* one ``nn.EmbeddingBag(mode=sum|mean, sparse=True)`` per bag table (pooled features), and
* one ``nn.Embedding(sparse=True)`` per sequence table: sequences are looked up id by id and
  right-padded with a gather (no host sync), and pooled features on a sequence table (the
  candidate ``item_id``) pool with ``F.embedding_bag`` over the same weight,

so the forward computes exactly what ``MultiTaskModel.forward`` computes. Optimizers: the
tables use :class:`RowWiseSparseAdagrad` (the row-wise Adagrad rule of fbgemm's
``rowwise_adagrad`` that fusionrec fuses into its backward, here on ``sparse=True``
gradients), the dense part ``torch.optim.Adam`` with the config's learning rates.

Data: the same :class:`datasets.reader.ParquetReader`, in the process (num_workers=0, as the
Trainer reads), with world_size 1 and the global batch. The timed region covers reading,
forward, backward and both optimizer steps; the loss is summed on the device and read once at
the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch
import torch.nn.functional as F
from fusionrec.datasets.batch import Batch
from fusionrec.datasets.reader import ParquetReader, resolve_paths
from fusionrec.datasets.schema import Schema
from fusionrec.models import build_model
from fusionrec.pipeline.config import ExperimentConfig, load_config
from torch import nn


class RowWiseSparseAdagrad(torch.optim.Optimizer):
    """Row-wise Adagrad for embedding tables with sparse gradients (fbgemm's rule):
    ``s_r += mean(g_r²)``; ``w_r -= lr · g_r / (sqrt(s_r) + eps)`` for each touched row r."""

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                state = self.state[p]
                if "sum" not in state:
                    state["sum"] = torch.zeros(p.shape[0], dtype=p.dtype)
                acc = state["sum"]
                acc.index_add_(0, rows, values.pow(2).mean(dim=1))
                scale = acc.index_select(0, rows).sqrt_().add_(eps).reciprocal_().mul_(-lr)
                p.index_add_(0, rows, values * scale.unsqueeze(1))


class PlainEmbeddings(nn.Module):
    """The schema's tables as plain ``nn.EmbeddingBag`` / ``nn.Embedding`` modules."""

    def __init__(self, schema: Schema) -> None:
        super().__init__()
        features = schema.features
        if features.weighted_pooling:
            raise NotImplementedError("the baseline does not implement weighted pooling")
        self.bags = nn.ModuleDict()
        for name in features.bag_tables:
            table = features.table(name)
            pooling = next(f.pooling for f in features.pooled_features if f.table == name)
            self.bags[name] = nn.EmbeddingBag(table.num_embeddings, table.dim, mode=pooling, sparse=True)
        self.seqs = nn.ModuleDict()
        for name in features.sequence_tables:
            table = features.table(name)
            self.seqs[name] = nn.Embedding(table.num_embeddings, table.dim, sparse=True)
        self.pooled = [(f.name, f.table, f.pooling) for f in features.pooled_features]
        self.on_seq_table = [(f.name, f.table) for f in features.sequence_table_features]
        self.sparse_names = [f.name for f in features.sparse]
        self.sequences = [(s.name, s.max_len) for s in features.sequences]
        self.seq_pooling = {f.name: f.pooling for f in features.sparse}
        self.register_buffer(
            "zero_row", torch.zeros(1, max([t.dim for t in features.tables], default=1)), persistent=False
        )

    @staticmethod
    def _split(kjt) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """KJT → {key: (values, lengths)} with plain tensor slicing."""
        keys, values, lengths = kjt.keys(), kjt.values(), kjt.lengths()
        if not keys:
            return {}
        per_key = lengths.view(len(keys), -1)
        counts = per_key.sum(dim=1).tolist()  # CPU tensors: no device sync
        out, start = {}, 0
        for i, (key, n) in enumerate(zip(keys, counts)):
            out[key] = (values[start : start + n], per_key[i])
            start += n
        return out

    def forward(self, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """→ (fields P × [B, D] in schema order, padded sequences M × [B, L, D], lengths M × [B])."""
        pooled: dict[str, torch.Tensor] = {}
        sparse = self._split(batch.sparse)
        for name, table, _ in self.pooled:
            values, lengths = sparse[name]
            offsets = lengths.cumsum(0) - lengths
            pooled[name] = self.bags[table](values, offsets)
        seq = self._split(batch.sequence)
        table_of = dict(self.on_seq_table)
        for name in self.sparse_names:
            if name in pooled:
                continue
            values, lengths = seq[name]
            offsets = lengths.cumsum(0) - lengths
            weight = self.seqs[table_of[name]].weight
            pooled[name] = F.embedding_bag(values, weight, offsets, mode=self.seq_pooling[name], sparse=True)
        fields = [pooled[n] for n in self.sparse_names]
        sequences, lens = [], []
        for name, max_len in self.sequences:
            values, lengths = seq[name]
            emb = self.seqs[table_of[name]](values)  # [N, D]
            n = emb.shape[0]
            emb = torch.cat([emb, self.zero_row[:, : emb.shape[1]]], dim=0)  # row n: padding
            starts = lengths.cumsum(0) - lengths
            pos = torch.arange(max_len)
            valid = pos < lengths.unsqueeze(1)  # [B, L]
            index = torch.where(valid, starts.unsqueeze(1) + pos, n)
            sequences.append(emb[index])  # [B, L, D], zeros after each row's length
            lens.append(lengths.clamp(max=max_len))
        return fields, sequences, lens


class BaselineModel(nn.Module):
    """Plain embeddings + fusionrec's bottom, fusion, towers and loss."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__()
        inner = build_model(cfg.schema, cfg.model, device=torch.device("meta"))
        self.embeddings = PlainEmbeddings(cfg.schema)
        self.bottom, self.fusion, self.towers, self.loss_fn = inner.bottom, inner.fusion, inner.towers, inner.loss_fn

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        fields, sequences, lengths = self.embeddings(batch)
        logits = self.towers(self.fusion(self.bottom(batch.dense, fields, sequences, lengths)))
        loss, _ = self.loss_fn(logits, batch.labels, batch.weights)
        return loss, logits

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("embeddings.")]


def run(
    cfg: ExperimentConfig,
    batch_size: int,
    warmup: int,
    steps: int,
    threads: int,
    profile: str | None = None,
) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    model = BaselineModel(cfg)
    model.train()
    sparse_cfg, dense_cfg = cfg.train.sparse_optimizer, cfg.train.dense_optimizer
    sparse_opt = RowWiseSparseAdagrad(model.embeddings.parameters(), lr=sparse_cfg.lr, eps=sparse_cfg.eps)
    dense_opt = torch.optim.Adam(model.dense_parameters(), lr=dense_cfg.lr, eps=dense_cfg.eps)
    reader = ParquetReader(resolve_paths(cfg.data.train), cfg.schema, batch_size, rank=0, world_size=1)
    if reader.num_batches < warmup + steps:
        raise SystemExit(f"{cfg.data.train}: {reader.num_batches} batches of {batch_size}, need {warmup + steps}")
    loss_sum = torch.zeros(())
    stream = iter(reader)
    prof = None
    step_times: list[float] = []
    t0 = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            if profile:
                prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                prof.__enter__()
            t0 = time.perf_counter()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        with torch.profiler.record_function("## data ##"):
            batch = next(stream)
        with torch.profiler.record_function("## forward ##"):
            loss, _ = model(batch)
        with torch.profiler.record_function("## backward ##"):
            loss.backward()
        with torch.profiler.record_function("## optimizer ##"):
            sparse_opt.step()
            dense_opt.step()
            sparse_opt.zero_grad(set_to_none=True)
            dense_opt.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        if i >= warmup:
            step_times.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    mean_loss = loss_sum.item() / (warmup + steps)
    out = {
        "samples_per_s": steps * batch_size / elapsed,
        "elapsed_s": elapsed,
        "steps": steps,
        "warmup": warmup,
        "batch_size": batch_size,
        "threads": threads,
        "mean_loss": mean_loss,
        "step_ms_median": 1000 * sorted(step_times)[len(step_times) // 2],
        "cpu_s": cpu,
        "cpu_ms_per_1k_samples": 1e6 * cpu / (steps * batch_size),
    }
    if prof is not None:
        prof.__exit__(None, None, None)
        prof.export_chrome_trace(profile)
        out["profile_trace"] = profile
        out["profile_table"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], help="config override KEY.PATH=VALUE")
    parser.add_argument("--batch-size", type=int, required=True, help="the global batch")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", help="write a torch.profiler chrome trace of the timed steps here")
    parser.add_argument("--json", help="write the result here (else stdout)")
    parser.add_argument("--mallopt", action="store_true", help="keep freed memory in the heap, as fusionrec's trainer does")
    args = parser.parse_args(argv)
    if args.mallopt:
        from fusionrec.pipeline.job import keep_freed_memory

        keep_freed_memory()
    cfg = load_config(args.config, args.set)
    result = run(cfg, args.batch_size, args.warmup, args.steps, args.threads, args.profile)
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
