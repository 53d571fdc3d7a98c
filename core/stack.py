"""Fail fast, in one sentence, when torch, fbgemm_gpu and torchrec do not belong together.

TorchRec and FBGEMM release in lockstep with torch: torchrec 1.Y pairs with fbgemm-gpu 1.Y,
which is built against torch 2.(Y+5). A mismatched fbgemm otherwise surfaces as an
``undefined symbol`` deep inside ``import torchrec``. The check reads installed package
metadata only, so it runs *before* any of the three native libraries is loaded.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re

FBGEMM_DISTRIBUTIONS = ("fbgemm-gpu", "fbgemm-gpu-cpu", "fbgemm-gpu-nightly", "fbgemm-gpu-nightly-cpu")
FIX = "install the pinned stack with `make setup` (README: Pinned versions)"


class StackMismatchError(ImportError):
    """The installed torch / fbgemm_gpu / torchrec versions are not a known-good pairing."""


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_versions(torch: str | None, fbgemm: dict[str, str], torchrec: str | None) -> None:
    """Raise StackMismatchError unless torchrec 1.Y, fbgemm 1.Y and torch 2.(Y+5) are installed.

    Args:
        torch: installed torch version, None if absent.
        fbgemm: ``{distribution: version}`` for every installed fbgemm_gpu build; two builds
            at once (say the CUDA and the CPU one) shadow each other and are refused.
        torchrec: installed torchrec version, None if absent.
    """
    fb_text = ", ".join(f"{d} {v}" for d, v in fbgemm.items()) or "fbgemm_gpu None"
    found = f"torch {torch}, {fb_text}, torchrec {torchrec}"
    if torch is None or torchrec is None or not fbgemm:
        raise StackMismatchError(f"fusionrec needs torch, fbgemm_gpu and torchrec but found {found}; {FIX}.")
    if len(fbgemm) > 1:
        raise StackMismatchError(f"more than one fbgemm_gpu build is installed ({found}); {FIX}.")
    rec, fb, th = _major_minor(torchrec), _major_minor(next(iter(fbgemm.values()))), _major_minor(torch)
    if rec is None or rec[0] != 1 or fb != rec or th != (2, rec[1] + 5):
        raise StackMismatchError(
            f"incompatible stack: found {found}, but torchrec 1.Y needs fbgemm_gpu 1.Y and torch 2.(Y+5) "
            f"(e.g. torchrec 1.8, fbgemm_gpu 1.8, torch 2.13); {FIX}."
        )


def check_stack() -> None:
    """Check the installed stack (see :func:`check_versions`); call before importing torchrec."""
    fbgemm = {d: v for d in FBGEMM_DISTRIBUTIONS if (v := _installed(d))}
    check_versions(_installed("torch"), fbgemm, _installed("torchrec"))
