"""The torch / fbgemm_gpu / torchrec pairing check."""

import pytest

from fusionrec.stack import StackMismatchError, check_stack, check_versions


def test_pinned_stack_passes():
    check_versions("2.13.0+cpu", {"fbgemm-gpu-cpu": "1.8.0"}, "1.8.0")
    check_versions("2.14.1", {"fbgemm-gpu": "1.9.0"}, "1.9.0")


def test_installed_stack_is_known_good():
    check_stack()


@pytest.mark.parametrize(
    "torch, fbgemm, torchrec, names",
    [
        ("2.13.0", {"fbgemm-gpu-cpu": "1.9.0"}, "1.8.0", ["fbgemm-gpu-cpu 1.9.0", "torchrec 1.8.0"]),
        ("2.14.0", {"fbgemm-gpu-cpu": "1.8.0"}, "1.8.0", ["torch 2.14.0"]),
        ("2.13.0", {"fbgemm-gpu": "1.8.0", "fbgemm-gpu-cpu": "1.8.0"}, "1.8.0", ["more than one fbgemm_gpu"]),
        ("2.13.0", {}, "1.8.0", ["fbgemm_gpu None"]),
        ("2.13.0", {"fbgemm-gpu-cpu": "1.8.0"}, None, ["torchrec None"]),
    ],
)
def test_mismatch_is_one_sentence_naming_versions(torch, fbgemm, torchrec, names):
    with pytest.raises(StackMismatchError) as err:
        check_versions(torch, fbgemm, torchrec)
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    assert "make setup" in message


@pytest.mark.parametrize("package", ["pipeline", "models", "sharding", "datasets"])
def test_import_stops_before_torchrec_loads_on_mismatch(package):
    """Importing any fusionrec package with a mismatched fbgemm fails with the one-sentence error,
    before torchrec (and its native library) is imported."""
    import subprocess
    import sys

    from tests.launch import REPO, child_env

    code = (
        "import importlib.metadata as m, sys\n"
        "real = m.version\n"
        "m.version = lambda d: '1.9.0' if d == 'fbgemm-gpu-cpu' else real(d)\n"
        "try:\n"
        f"    import {package}\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
        "    print('torchrec loaded:', 'torchrec' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True, text=True)
    assert "StackMismatchError incompatible stack: found torch 2.13.0" in proc.stdout, proc.stdout + proc.stderr
    assert "fbgemm-gpu-cpu 1.9.0" in proc.stdout
    assert "torchrec loaded: False" in proc.stdout
