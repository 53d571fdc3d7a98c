"""Soak: many real short 2-rank jobs back to back, each checked for a clean end.

    python benchmarks/soak.py --jobs 105 --json benchmarks/results/soak.json --md benchmarks/results/soak.md
    python benchmarks/soak.py --jobs 7 --control 0          # one cycle, a quick look

A cycle runs seven jobs on small synthetic demo logs, the way a cluster runs them:

1. ``train``: bare ``torchrun`` (2 gloo ranks), a fresh run dir, a few steps;
2. ``resume``: the same run dir, ``--resume`` to more steps;
3. ``evaluate-torchrun``: the offline evaluation under ``torchrun``, 2 ranks;
4. ``evaluate-1p``: the same in one plain process;
5. ``sigterm``: a longer training under ``fusionrec train``, SIGTERM to the launcher once it
   has logged a step (preemption: the ranks agree on a step, save there, and the job exits 0;
   bare torchrun itself exits 1 after any signal, docs/reliability.md);
6. ``sigterm-resume``: that run dir resumed to its end;
7. ``launcher``: ``fusionrec train`` (the launcher, which runs torchrun itself).

Every other cycle runs with a CPU hog beside it (a busy loop, on the 2-core machine: the
load a shared node has). A job passes when it exits with its expected code (0 for all
seven), its output has none of ``terminate called``, ``Traceback``, ``Fatal Python error``,
``SIGABRT`` / ``exitcode: -N``, its last line says why it ended (``done:``, ``stopped by``,
an evaluation's table), no process of it is left in the process table 5 s after it exits
(orphans; zombies of the soak's own children are reaped by ``subprocess``), and its run dir
holds no ``.tmp-`` leftover and no damaged checkpoint.

``--control N`` also runs ``tests/workers/stale_group.py --raw`` N times: a worker that keeps a
stale reference to its gloo group and ends with a bare ``destroy_process_group()``, the
defect the fixed exit path removes. Its aborts show that this soak sees an abort when one
happens; they are reported apart and not counted in the jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.runinfo import load_average, run_info  # noqa: E402
from benchmarks.throughput import free_port  # noqa: E402

CONFIG = str(REPO / "configs/demo.yaml")
KINDS = ("train", "resume", "evaluate-torchrun", "evaluate-1p", "sigterm", "sigterm-resume", "launcher")
BAD = re.compile(r"terminate called|Traceback|Fatal Python error|SIGABRT|exitcode\s*:\s*-\d|Aborted|core dumped")
ENDED = {
    "train": "done: ",
    "resume": "done: ",
    "evaluate-torchrun": "wrote ",
    "evaluate-1p": "wrote ",
    "sigterm": "stopped by SIGTERM",
    "sigterm-resume": "done: ",
    "launcher": "done: ",
}
PYTHON = sys.executable


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = f"{REPO}{os.pathsep}{e.get('PYTHONPATH', '')}"
    e["OMP_NUM_THREADS"] = "1"
    return e


def torchrun(*args: str) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master-addr",
            "127.0.0.1", "--master-port", str(free_port()), *args]  # fmt: skip


def train_args(logs: Path, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return ["--config", CONFIG, "--train-data", str(logs / "train"), "--run-dir", str(run_dir), "--max-steps",
            str(steps), "--set", "data.batch_size=32", "--set", "train.log_every=2", "--set", "train.epochs=20",
            *extra]  # fmt: skip


def command(kind: str, logs: Path, run: Path, out: Path) -> list[str]:
    if kind == "train":
        return torchrun("-m", "fusionrec.pipeline.train", *train_args(logs, run, 12))
    if kind == "resume":
        return torchrun("-m", "fusionrec.pipeline.train", *train_args(logs, run, 20, "--resume"))
    evaluate = ["-m", "fusionrec.pipeline.evaluate", "--config", CONFIG, "--checkpoint", str(run),
                "--data", str(logs / "eval"), "--no-plots", "--fusion-batches", "2", "--out", str(out)]  # fmt: skip
    if kind == "evaluate-torchrun":
        return torchrun(*evaluate)
    if kind == "evaluate-1p":
        return [PYTHON, *evaluate]
    launcher = [PYTHON, "-m", "fusionrec", "train", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port())]  # fmt: skip
    if kind == "sigterm":
        return [*launcher, *train_args(logs, run, 60)]
    if kind == "sigterm-resume":
        return torchrun("-m", "fusionrec.pipeline.train", *train_args(logs, run, 60, "--resume"))
    if kind == "launcher":
        return [*launcher, *train_args(logs, run, 12)]
    raise ValueError(kind)


def logged_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if '"loss"' in line]
    return steps[-1] if steps else 0


def processes_mentioning(marker: str) -> list[str]:
    """``pid state cmdline`` of every live process whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{entry.name} {state} {cmd[:160]}")
    return found


def leftovers(marker: str, wait_s: float = 5.0) -> list[str]:
    deadline = time.monotonic() + wait_s
    while True:
        found = processes_mentioning(marker)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def damaged_files(run: Path) -> list[str]:
    from fusionrec.pipeline import checkpoint as ckpt  # noqa: PLC0415

    if not run.exists():
        return []
    bad = [str(p) for p in run.rglob(".tmp-*")]
    for c in ckpt.list_checkpoints(run):
        problem = ckpt.damage(c)
        if problem is not None:
            bad.append(f"{c}: {problem}")
    return bad


def run_job(kind: str, logs: Path, run: Path, out: Path, log: Path) -> dict:
    cmd = command(kind, logs, run, out)
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=f, stderr=subprocess.STDOUT)
        if kind == "sigterm":
            deadline = time.monotonic() + 240
            while logged_step(run) < 4 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    problems = sorted({m.group(0) for m in BAD.finditer(text)})
    if code != 0:
        problems.append(f"exit {code}")
    if not any(ENDED[kind] in line for line in lines[-25:]):
        problems.append(f"no {ENDED[kind]!r} line at the end")
    left = leftovers(str(run))
    if left:
        problems.append(f"{len(left)} process(es) left: " + "; ".join(left))
    damaged = damaged_files(run)
    if damaged:
        problems.append("damaged or half-written: " + "; ".join(damaged))
    return {"kind": kind, "code": code, "seconds": round(seconds, 1), "problems": problems,
            "tail": "\n".join(lines[-15:]) if problems else ""}  # fmt: skip


def run_control(n: int, root: Path) -> list[dict]:
    """The stale-group worker with a bare destroy_process_group(): aborts expected."""
    out = []
    for i in range(n):
        d = root / f"control{i}"
        d.mkdir()
        cmd = torchrun(str(REPO / "tests/workers/stale_group.py"), str(d), "--raw")
        proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
        text = proc.stdout + proc.stderr
        out.append({"code": proc.returncode, "terminate": "terminate called without an active exception" in text})
    return out


class Hog:
    """A busy loop in another process while the ``with`` lasts (or nothing when ``on`` is false)."""

    def __init__(self, on: bool) -> None:
        self.on, self.proc = on, None

    def __enter__(self) -> "Hog":
        if self.on:
            self.proc = subprocess.Popen([PYTHON, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def make_logs(root: Path) -> Path:
    logs = root / "logs"
    subprocess.run([PYTHON, "-m", "fusionrec.datasets.synthetic", "--config", CONFIG, "--out", str(logs), "--rows",
                    "4000", "--set", "synthetic.row_group_size=500"], cwd=REPO, env=env(), check=True,
                   capture_output=True)  # fmt: skip
    return logs


def render_md(res: dict) -> str:
    jobs = res["jobs"]
    clean = sum(1 for j in jobs if not j["problems"])
    lines = [
        "# Soak: real 2-rank jobs back to back, each checked for a clean end",
        "",
        f"Date {res['date']}; machine: {res['machine']}; load average at start {res['load_at_start']}, "
        f"at end {res['load_at_end']}.",
        f"Command: `{res['command']}`.",
        "",
        f"**{clean} of {len(jobs)} jobs clean** (exit code as expected, no abort, traceback or fatal line, a last "
        "line saying why the job ended, no process left behind, no half-written or damaged file).",
        "",
        "| job | runs | clean | with the CPU hog | exit codes | median s |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for kind in KINDS:
        mine = [j for j in jobs if j["kind"] == kind]
        if not mine:
            continue
        codes = sorted({j["code"] for j in mine})
        secs = sorted(j["seconds"] for j in mine)
        lines.append(f"| `{kind}` | {len(mine)} | {sum(1 for j in mine if not j['problems'])} | "
                     f"{sum(1 for j in mine if j['hog'])} | {', '.join(map(str, codes))} | {secs[len(secs) // 2]} |")
    bad = [j for j in jobs if j["problems"]]
    lines += ["", "## Jobs that were not clean", ""]
    if not bad:
        lines.append("None.")
    for j in bad:
        lines += [f"- job {j['index']} `{j['kind']}` (hog {'on' if j['hog'] else 'off'}): "
                  f"{'; '.join(j['problems'])}", "", "```", j["tail"], "```", ""]  # fmt: skip
    control = res.get("control") or []
    if control:
        aborted = sum(1 for c in control if c["code"] != 0)
        term = sum(1 for c in control if c["terminate"])
        lines += [
            "",
            "## Control: the defect itself (`tests/workers/stale_group.py --raw`)",
            "",
            f"{len(control)} runs of a 2-rank worker that keeps a stale reference to its gloo group and ends with a "
            f"bare `destroy_process_group()`: **{aborted} exited non-zero**, {term} printed `terminate called "
            "without an active exception`. Exit codes: "
            + ", ".join(str(c["code"]) for c in control) + ".",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=105, help="jobs to run (cycles of seven)")
    p.add_argument("--control", type=int, default=12, help="runs of the defect's control worker")
    p.add_argument("--no-hog", action="store_true", help="never run the CPU hog")
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs of every job)")
    args = p.parse_args(argv)

    res = {**run_info(), "jobs": []}
    root = Path(tempfile.mkdtemp(prefix="fusionrec_soak_"))
    logs = make_logs(root)
    run = eval_out = None
    try:
        for i in range(args.jobs):
            cycle, kind = divmod(i, len(KINDS))
            kind = KINDS[kind]
            if kind in ("train", "sigterm", "launcher"):
                run = root / f"run{i}"
            eval_out = root / f"eval{i}" / "eval.json"
            hog = not args.no_hog and cycle % 2 == 1
            with Hog(hog):
                rec = run_job(kind, logs, run, eval_out, root / f"job{i}.log")
            rec.update(index=i, hog=hog, load=load_average()[0])
            res["jobs"].append(rec)
            status = "clean" if not rec["problems"] else "NOT CLEAN: " + "; ".join(rec["problems"])
            print(f"[{i + 1}/{args.jobs}] {kind:<18} hog={'on ' if hog else 'off'} exit {rec['code']} "
                  f"{rec['seconds']:5.1f} s  {status}", flush=True)
        if args.control:
            res["control"] = run_control(args.control, root)
            print(f"control: {sum(c['code'] != 0 for c in res['control'])}/{args.control} aborted", flush=True)
    finally:
        res["load_at_end"] = load_average()
        if args.json:
            args.json.write_text(json.dumps(res, indent=1) + "\n")
        if args.md:
            args.md.write_text(render_md(res))
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if all(not j["problems"] for j in res["jobs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
