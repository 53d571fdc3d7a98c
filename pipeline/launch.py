"""``fusionrec train``: check a training job in this process, then run it under torchrun.

    fusionrec train --nproc-per-node 2 --config configs/demo.yaml --run-dir runs/demo
    fusionrec train --nnodes 2 --nproc-per-node 8 --rdzv-endpoint node0:29400 --rdzv-id job-7 \\
        --config configs/production.yaml --run-dir /shared/runs/prod --resume

The options torchrun needs (``--nproc-per-node``, ``--nnodes``, ``--rdzv-*``, ``--max-restarts``,
``--master-addr/--master-port``) go to torchrun; every other argument is ``pipeline.train``'s.

Before any worker starts, this one process loads the config (with ``--set``), builds the model on
the meta device, reads the train (and eval) data's Parquet footers, checks the run dir's lock
(one node) and, with ``--resume``, the checkpoint's config and id types: a problem there is one
line and exit 2, as in any fusionrec command. While the job runs, a worker's user error (one line
``error: rank R/W: ...``) is printed once and the launcher exits 2 instead of passing on
torchrun's ``ChildFailedError`` report; any other failure keeps torchrun's full output and exit
code. SIGTERM and SIGINT (sent on as SIGTERM) and SIGUSR1 to the launcher reach every worker
through the agent (which forwards SIGUSR1 too: ``--signals-to-handle``); the workers
save a checkpoint and the launcher exits 0 after rank 0's line saying where. If the launcher itself is killed, the agent gets
SIGTERM (``PR_SET_PDEATHSIG``), so the workers save and stop rather than run on unsupervised.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

TORCHRUN_OPTIONS = {  # option -> takes a value
    "--nproc-per-node": True, "--nnodes": True, "--node-rank": True, "--rdzv-backend": True,
    "--rdzv-endpoint": True, "--rdzv-id": True, "--rdzv-conf": True, "--max-restarts": True,
    "--master-addr": True, "--master-port": True, "--monitor-interval": True, "--signals-to-handle": True,
    "--local-addr": True,
    "--standalone": False,
}  # fmt: skip
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
AGENT_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
STOP_WAIT_S = 30.0  # after a stop signal, how long to wait for a worker's "stopped" report


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(torchrun's options, pipeline.train's arguments); ``--opt=value``, ``--opt value`` and
    torchrun's underscore spellings (``--nproc_per_node``) are accepted."""
    torchrun, train = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0].replace("_", "-")
        if name in TORCHRUN_OPTIONS:
            torchrun.append(name + arg[len(name):] if "=" in arg else name)
            if TORCHRUN_OPTIONS[name] and "=" not in arg:
                if i + 1 >= len(argv):
                    raise SystemExit(f"error: {arg} needs a value")
                torchrun.append(argv[i + 1])
                i += 1
        else:
            train.append(arg)
        i += 1
    if train[:2] == ["-m", "fusionrec.pipeline.train"]:
        train = train[2:]
    return torchrun, train


def _option(torchrun: list[str], name: str, default: Optional[str]) -> Optional[str]:
    for i, arg in enumerate(torchrun):
        if arg == name and i + 1 < len(torchrun):
            return torchrun[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def check_job(torchrun: list[str], train_argv: list[str]) -> None:
    """Everything about the job that can be checked in one process before torchrun starts; a
    problem raises a user error (one line, exit 2)."""
    import torch  # noqa: PLC0415  (after argument parsing: --help stays fast)

    from fusionrec.errors import UserError  # noqa: PLC0415
    from fusionrec.pipeline import checkpoint as ckpt  # noqa: PLC0415
    from fusionrec.datasets.partitions import list_partitions  # noqa: PLC0415
    from fusionrec.pipeline import job  # noqa: PLC0415
    from fusionrec.pipeline.distributed import DistInfo  # noqa: PLC0415
    from fusionrec.pipeline.runlock import RunDirLock  # noqa: PLC0415
    from fusionrec.pipeline.train_args import config_overrides, parse_args  # noqa: PLC0415

    args = parse_args(train_argv)
    cfg = job.load_job_config(args.config, config_overrides(args))
    job.build_meta_model(cfg, cfg.train.sparse_optimizer)
    nproc, nnodes = _option(torchrun, "--nproc-per-node", "1"), _option(torchrun, "--nnodes", "1")
    per_node = int(nproc) if nproc.isdigit() else 1  # "gpu", "auto": counted by torchrun
    world = per_node * int(nnodes) if nnodes.isdigit() else None  # "MIN:MAX": elastic
    if cfg.data.train is None:
        raise UserError("no train data: set data.train in the config or pass --train-data")
    info = DistInfo(0, world or 1, 0, per_node, torch.device("cpu"))
    if cfg.train.follow.enabled:  # the log may still be empty: check that its root lists
        part = cfg.data.partitioning
        list_partitions(cfg.data.train, part.keys, part.marker)
        reader = None
    else:
        reader = job.make_reader(cfg, job.train_files(cfg, cfg.data.train), info, cfg.data.batch_size, train=True)
    if world is not None and reader is not None and reader.num_batches == 0:
        raise UserError(
            f"data.train {cfg.data.train!r} has too few rows for one batch of {cfg.data.batch_size} per rank "
            f"on {world} ranks"
        )
    if cfg.train.eval_every_n_steps and reader is not None:
        periodic = job.make_reader(cfg, cfg.data.eval, info, cfg.eval.batch_size or cfg.data.batch_size, train=False)
        job.check_same_id_types(cfg, reader, periodic)
    run_dir = Path(args.run_dir)
    if nnodes == "1":  # on several nodes, another node's rank 0 may already hold it legitimately
        RunDirLock(run_dir).acquire().release()
    if args.resume and ckpt.list_checkpoints(run_dir):
        job.check_checkpoint_binding(cfg, job.resolve_checkpoint(run_dir, announce=False), reader, "resume")


def _die_with_parent() -> None:
    """In the torchrun child, before exec: SIGTERM it when the launcher dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def first_error(report_dir: Path) -> Optional[str]:
    """The earliest user-error line a worker left (:func:`fusionrec.errors.report_to_launcher`)."""
    files = sorted(report_dir.glob("error-rank*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return files[0].read_text().strip() if files else None


def stopped(report_dir: Path) -> bool:
    """Whether a worker of this node reported that the job saved and stopped on a signal."""
    return any(report_dir.glob("stopped-rank*"))


def run_torchrun(torchrun: list[str], train_argv: list[str]) -> int:
    """Run the job under torchrun and map its outcome: 0 done or stopped by a signal with a
    checkpoint saved, 2 a worker's user error (its one line), else torchrun's own exit code
    with its output."""
    if "--standalone" not in torchrun and _option(torchrun, "--rdzv-endpoint", None) is None and \
            _option(torchrun, "--master-addr", None) is None and _option(torchrun, "--nnodes", "1") == "1":
        torchrun = ["--standalone", *torchrun]
    if _option(torchrun, "--nproc-per-node", None) is None:
        torchrun = [*torchrun, "--nproc-per-node", "1"]
    if _option(torchrun, "--signals-to-handle", None) is None:
        torchrun = [*torchrun, "--signals-to-handle", AGENT_SIGNALS]
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun, "-m", "fusionrec.pipeline.train", *train_argv]
    with tempfile.TemporaryDirectory(prefix="fusionrec-launch-") as folder:
        report_dir = Path(folder)
        env = dict(os.environ, FUSIONREC_REPORT_DIR=folder)
        # Its own session, so a terminal's Ctrl-C reaches the agent once, through forward().
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True,
                                preexec_fn=_die_with_parent)  # fmt: skip
        received: list[int] = []

        def forward(signum: int, frame: object) -> None:
            # Once only: a second signal would make the agent give up waiting for its workers.
            # Ctrl-C too saves: the workers handle SIGTERM, not SIGINT.
            if not received and proc.poll() is None:
                proc.send_signal(signal.SIGUSR1 if signum == signal.SIGUSR1 else signal.SIGTERM)
            received.append(signum)

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
        held: Optional[list[str]] = None  # stderr held back once a stop or a user error is under way
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if held is None and (received or line.startswith("error: ")):
                    held = []
                if held is not None:
                    held.append(line)
                else:
                    sys.stderr.write(line)
            code = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        deadline = time.monotonic() + STOP_WAIT_S
        while received and not stopped(report_dir) and first_error(report_dir) is None and time.monotonic() < deadline:
            time.sleep(0.2)  # an agent that exits early leaves its workers finishing the save
        error = first_error(report_dir)
        if error is not None:
            print(error, file=sys.stderr, flush=True)
            return 2
        if stopped(report_dir) and (received or code == 0):
            return 0  # rank 0 printed where the checkpoint is
        sys.stderr.writelines(held or [])
        return code


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    torchrun, train_argv = split_args(argv)
    if any(a in ("-h", "--help") for a in train_argv):
        from fusionrec.pipeline.train_args import parse_args  # noqa: PLC0415

        print(__doc__.split("\n\n")[0] + "\n\ntorchrun options: " + " ".join(TORCHRUN_OPTIONS) + "\n")
        parse_args(["--help"])
    from fusionrec.errors import exit_on_user_error  # noqa: PLC0415
    from fusionrec.pipeline.logs import quiet_third_party  # noqa: PLC0415

    quiet_third_party()
    with exit_on_user_error():
        check_job(torchrun, train_argv)
    return run_torchrun(torchrun, train_argv)


if __name__ == "__main__":
    sys.exit(main())
