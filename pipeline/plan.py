"""Plan a model's embedding tables for a GPU cluster on any machine, and report memory per rank.

    python -m fusionrec.pipeline.plan --config configs/production.yaml --world-size 64 \\
        --device cuda --hbm-gb 80 --ddr-gb 2048 [--gpus-per-host 8] [--data-type fp16] [--json plan.json]

Runs on a CPU-only machine: the model is built with its tables on the meta device (no table
memory is allocated), no process group is started, and TorchRec's planner plans for a
``Topology`` of ``--world-size`` GPUs. It prints the plan (table → sharding type, kernel,
ranks), each rank's HBM and host-memory (DDR) use, and the planner's perf estimate. When the
tables cannot fit it says how much memory is missing and what to try, and exits 1.
``--data-type fp16`` plans every table with fp16 weights (half the bytes, which the planner
counts) to see how many fewer GPUs they need.

Memory flags are in GiB (2**30 bytes): ``--hbm-gb`` per GPU, ``--ddr-gb`` per host, shared
evenly by the host's GPUs. Without them the config's ``sharding.hbm_gb`` / ``sharding.ddr_gb``
(per rank) are used.

The model is built by the job recipe (:func:`fusionrec.pipeline.job.build_meta_model`, the
sparse optimizer fused as in training, so the planner counts its state); the report is
:mod:`fusionrec.sharding.report`, the same one the training job prints at start-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from torchrec.distributed.planner.types import PlannerError

from fusionrec.errors import exit_on_user_error
from fusionrec.pipeline.job import build_meta_model, collision_ids_per_step, load_job_config
from fusionrec.pipeline.logs import quiet_third_party
from fusionrec.sharding.planner import GIB, MachineMemory, default_sharders, make_constraints, make_planner
from fusionrec.sharding.report import (
    PlanRecorder,
    embedding_tables,
    fit_report,
    format_fit_report,
    format_memory_summary,
    format_table_plan,
    quiet_planner,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fusionrec.pipeline.plan",
        description="Plan an experiment's embedding tables for a cluster (no GPU needed) and report memory per rank.",
    )
    p.add_argument("--config", required=True, help="experiment YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value")
    p.add_argument("--world-size", type=int, required=True, help="number of ranks (GPUs) in the cluster")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="rank type (default: cuda)")
    p.add_argument("--gpus-per-host", type=int, default=8, help="ranks per host (default: 8)")
    p.add_argument("--hbm-gb", type=float, help="GPU memory per GPU in GiB (default: sharding.hbm_gb)")
    p.add_argument(
        "--ddr-gb", type=float, help="host memory per host in GiB, shared by its ranks (default: sharding.ddr_gb per rank)"
    )
    p.add_argument("--batch-size", type=int, help="per-rank batch size (default: data.batch_size)")
    p.add_argument(
        "--data-type",
        choices=["fp32", "fp16"],
        help="plan every table with this weight precision instead of its features.tables data_type",
    )
    p.add_argument("--json", metavar="OUT", help="also write the plan as JSON to OUT")
    return p.parse_args(argv)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    args = parse_args(argv)
    with exit_on_user_error():
        cfg = load_job_config(args.config, list(args.set))
    if args.world_size < 1 or args.gpus_per_host < 1:
        return _fail("--world-size and --gpus-per-host must be at least 1")
    local_world_size = min(args.gpus_per_host, args.world_size)
    if args.world_size % local_world_size:
        return _fail(
            f"--world-size {args.world_size} is not a whole number of hosts of --gpus-per-host {args.gpus_per_host}"
        )
    hbm = 0
    if args.device == "cuda":
        hbm_gb = args.hbm_gb if args.hbm_gb is not None else cfg.sharding.hbm_gb
        if hbm_gb is None:
            return _fail("give the GPU memory with --hbm-gb (or sharding.hbm_gb in the config), e.g. --hbm-gb 80")
        hbm = int(hbm_gb * GIB)
    if args.ddr_gb is not None:
        ddr = int(args.ddr_gb * GIB) // local_world_size
    elif cfg.sharding.ddr_gb is not None:
        ddr = int(cfg.sharding.ddr_gb * GIB)
    else:
        return _fail("give the host memory per host with --ddr-gb (or sharding.ddr_gb per rank in the config)")
    if args.data_type is not None:
        for table in cfg.features.tables:
            table.data_type = args.data_type
    batch_size = args.batch_size or cfg.data.batch_size
    memory = MachineMemory(hbm_bytes=hbm, ddr_bytes=ddr)

    model = build_meta_model(cfg, cfg.train.sparse_optimizer, args.world_size)
    table_names = [t.name for t in cfg.features.tables]

    recorder = PlanRecorder()
    planner = make_planner(
        cfg.sharding, table_names, args.world_size, local_world_size, args.device, batch_size, memory, stats=[recorder],
        collision_ids_per_step=collision_ids_per_step(cfg, batch_size, args.world_size),
    )  # fmt: skip
    start = time.perf_counter()
    try:
        with quiet_planner():
            planner.plan(model, default_sharders())
    except PlannerError as err:
        reserved = getattr(recorder.storage_reservation, "last_reserved_topology", None)
        if reserved is not None:
            hbm_usable = reserved.devices[0].storage.hbm
        else:
            hbm_usable = int(hbm * (1 - cfg.sharding.storage_reservation))
        last_error = [line.strip() for line in str(err).splitlines() if line.strip()]
        report = fit_report(
            embedding_tables(model, make_constraints(cfg.sharding, table_names)),
            cfg.train.sparse_optimizer.type,
            args.world_size,
            args.gpus_per_host,
            args.device,
            hbm_usable,
            ddr,
            planner_error=last_error[-1] if last_error else type(err).__name__,
        )
        print(f"error: {format_fit_report(report)}", file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        return 1
    elapsed = time.perf_counter() - start
    summary = recorder.summary()
    assert summary is not None, "the planner returned a plan without logging it"
    summary.planning_seconds = elapsed
    print(f"sharding plan for {args.config} on {args.world_size} {args.device} rank(s), batch {batch_size}/rank:")
    print(format_table_plan(summary))
    print()
    print(format_memory_summary(summary), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
