"""Packaging and import structure: one ``fusionrec`` namespace, no package cycles, no job
importing another job.

The repository's folders ``datasets/``, ``models/``, ``sharding/``, ``pipeline/`` install as
``fusionrec.datasets`` ...; these tests build the real wheel, import the installed package
beside an unrelated top-level ``datasets`` package, and read every module's imports.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.launch import REPO

PACKAGES = {"datasets": "datasets", "models": "models", "sharding": "sharding", "pipeline": "pipeline", "core": "fusionrec"}
# Who may import whom (package level): data flows datasets -> pipeline <- models, sharding;
# `fusionrec` itself (core/) is the shared base every package may use.
ALLOWED = {
    "fusionrec": set(),
    "datasets": {"fusionrec"},
    "models": {"fusionrec", "datasets"},
    "sharding": {"fusionrec"},
    "pipeline": {"fusionrec", "datasets", "models", "sharding"},
}
JOBS = {"train", "evaluate", "plan", "export", "predict", "launch"}


def _imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _fusionrec_imports() -> dict[str, set[str]]:
    """``fusionrec.<pkg>.<module>`` → the fusionrec modules it imports."""
    graph = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).glob("*.py")):
            name = package if package == "fusionrec" else f"fusionrec.{package}"
            graph[f"{name}.{path.stem}"] = {m for m in _imports(path) if m.split(".")[0] == "fusionrec"}
    return graph


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "fusionrec"


def test_no_module_imports_the_old_top_level_names():
    bare = {"datasets", "models", "pipeline", "sharding"}
    offenders = []
    for folder in [*PACKAGES, "tests", "benchmarks"]:
        for path in (REPO / folder).rglob("*.py"):
            found = {m.split(".")[0] for m in _imports(path)} & bare
            if found:
                offenders.append(f"{path.relative_to(REPO)}: {sorted(found)}")
    assert not offenders


def test_package_dependencies_flow_one_way():
    graph = _fusionrec_imports()
    edges = {(_package_of(src), _package_of(dst)) for src, dsts in graph.items() for dst in dsts}
    wrong = sorted(f"{a} -> {b}" for a, b in edges if a != b and b not in ALLOWED[a])
    assert not wrong, f"imports against the one-way flow: {wrong}"
    # ALLOWED itself is acyclic, so the package graph is too; prove it rather than trust it.
    state: dict[str, int] = {}

    def visit(p: str) -> None:
        state[p] = 1
        for q in {b for a, b in edges if a == p and b != p}:
            assert state.get(q) != 1, f"package cycle through {p} -> {q}"
            if q not in state:
                visit(q)
        state[p] = 2

    for p in ALLOWED:
        if p not in state:
            visit(p)


def test_no_job_imports_another_job():
    graph = _fusionrec_imports()
    for job in JOBS:
        mine = graph.get(f"fusionrec.pipeline.{job}", set())
        others = sorted(m for m in mine if m.split(".")[:3][-1] in JOBS - {job} and m.startswith("fusionrec.pipeline."))
        assert not others, f"pipeline.{job} imports {others}"


def test_errors_module_needs_neither_torch_nor_readers():
    code = (
        "import sys; import fusionrec.errors, fusionrec.typedconfig; "
        "bad = [m for m in ('torch', 'torchrec', 'pyarrow', 'fusionrec.datasets', 'fusionrec.pipeline') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(REPO)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("fusionrec-*.whl")
    return path


def test_wheel_installs_one_top_level_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"fusionrec"}
    for module in ("fusionrec/datasets/reader.py", "fusionrec/models/adatt.py", "fusionrec/sharding/planner.py",
                   "fusionrec/pipeline/job.py", "fusionrec/pipeline/train.py", "fusionrec/stack.py", "fusionrec/__main__.py"):
        assert module in names, module
    info = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(info).decode().split() == ["fusionrec"]


def test_installed_wheel_imports_beside_another_datasets_package(wheel, tmp_path):
    """The wheel, unpacked into its own directory, works next to an unrelated top-level
    ``datasets`` package (Hugging Face's import name) and from a directory holding a
    ``fusionrec``-free checkout-like layout."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    other = tmp_path / "other" / "datasets"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("IDENTITY = 'not fusionrec'\n")
    code = (
        "import datasets, fusionrec.datasets.reader, fusionrec.pipeline.job, fusionrec.models; "
        "assert datasets.IDENTITY == 'not fusionrec'; "
        "print(fusionrec.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(tmp_path / "other")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith(str(site))


def test_python_dash_m_fusionrec_is_the_console_script():
    proc = subprocess.run([sys.executable, "-m", "fusionrec"], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 2 and "usage: fusionrec {" in proc.stderr
    for command in ("generate", "train", "evaluate", "plan", "census"):
        assert command in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fusionrec", "plan", "--help"], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0 and "fusionrec.pipeline.plan" in proc.stdout
