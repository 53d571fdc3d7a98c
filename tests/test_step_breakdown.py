"""benchmarks/step_breakdown.account on a real torch.profiler trace: each op's self time lands in
the phase whose labelled range holds it and in the kind its name says; phases partition the step."""

from __future__ import annotations

import time

import torch
from torch.autograd.profiler import record_function

from benchmarks.step_breakdown import account, kind_of


def test_names_map_to_kinds():
    assert kind_of("c10d::alltoall_base_") == kind_of("All2All_Seq_ReqBackward") == "collectives"
    assert kind_of("ReduceScatterBase_Wait") == "collectives"
    assert kind_of("fbgemm::split_embedding_nobag_backward_codegen_rowwise_adagrad_cpu") == "embedding kernels"
    assert kind_of("fbgemm::permute_2D_sparse_data") == "sparse-data ops"
    assert kind_of("aten::mm") == "dense ops" and kind_of("autograd::engine::evaluate_function: MmBackward0") == "autograd nodes"
    assert kind_of("## forward ##") == "python"


def test_each_ops_time_is_in_its_phase_and_the_phases_cover_the_step():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    steps = 3
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            with record_function("## forward ##"):
                for _ in range(20):
                    a @ b
            with record_function("## fusionrec:metrics_update ##"):
                time.sleep(0.004)  # interpreter time, no op: the range's own self time
            a + b  # outside every phase: "other"
        wall_ms = 1000 * (time.perf_counter() - started) / steps
    got = account(prof.events(), steps, wall_ms)["phases"]
    forward, metrics, other = got["forward"], got["metrics update"], got["other"]
    assert forward["dense ops"] > 0.5 * forward["wall"] and forward["collectives"] == 0.0
    assert metrics["python"] >= 3.5 and metrics["dense ops"] == 0.0
    assert other["dense ops"] > 0.0
    assert abs(forward["wall"] + metrics["wall"] + other["wall"] - wall_ms) < 0.0015  # each rounded to 1 µs
    for row in (forward, metrics):  # inside a labelled range every microsecond is some op's self time
        assert abs(row["unprofiled"]) < 0.05 * row["wall"] + 0.01, row
